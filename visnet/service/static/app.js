// VisNet web page: search by photo (upload or a sample), shop the look, catalog browsing,
// product view with "more like this", filters (price, brand, stock) on both, one card for a
// picture listed under several ids ("N more listings"), triplet review.
// Plain JavaScript, no build step. Every value from the server goes in as text, never as HTML.
// The result lists shown and the results opened go to the click-through log (events.js).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KEY_STORE = "visnet.apiKey";
const REVIEWER_STORE = "visnet.reviewer";
const PAGE_SIZE = 24; // products per catalog page
const SIMILAR_K = 12;
const TILE_IMAGES = 24; // category tiles that fetch a picture (one request each)
const PRICE_PAUSE_MS = 700; // a price filter applies once typing pauses this long
const state = {
  file: null, // the photo searched (an upload or a sample's bytes)
  sample: null, // the sample's name when the photo is one
  queryUrl: null,
  searchToken: 0, // answers of searches started since the last one are dropped
  activeObject: null, // the detected object whose results alone are shown; null: all
  productId: null,
  browse: { key: null, cursors: [] }, // the cursor of each page seen of one listing
  routed: 0, // route changes so far (focus moves to the new view after the first)
  afterTriplet: 0,
  triplet: null,
  busy: false,
};

// ---- helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

// A response -> its JSON body, or an Error carrying the API's status and error code.
function answer(status, text) {
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (status < 200 || status >= 300) {
    const error = new Error(body && body.message ? body.message : `HTTP ${status}`);
    error.code = body && body.error;
    error.status = status;
    throw error;
  }
  return body;
}

function networkError() {
  const error = new Error("the server did not answer");
  error.code = "network";
  error.status = 0;
  return error;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (_) {
    throw networkError();
  }
  return answer(response.status, await response.text());
}

// POST a form with upload progress (fetch reports none): onProgress gets 0..1.
function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.upload.addEventListener("load", () => onProgress(1));
    xhr.addEventListener("load", () => {
      try {
        resolve(answer(xhr.status, xhr.responseText));
      } catch (error) {
        reject(error);
      }
    });
    xhr.addEventListener("error", () => reject(networkError()));
    xhr.send(form);
  });
}

// What each API error means to a shopper, by error code, then by HTTP status.
const SAY = {
  upload_too_large: "This photo is too large to upload. Try a smaller copy of it.",
  image_too_large: "This photo has too many pixels to search. Try a smaller copy of it.",
  not_an_image: "This file is not a photo we can read. Choose a JPEG, PNG or WebP image.",
  truncated_image: "This photo is incomplete (cut off while it was saved or downloaded). Try another copy.",
  bad_aspect_ratio: "This picture is too long and thin to search. Crop it around the product and try again.",
  unsupported_image: "This image format is not supported. Choose a JPEG, PNG or WebP photo.",
  not_ready: "The search is still starting up. Try again in a few seconds.",
  busy: "Many shoppers are searching right now. Try again in a moment.",
  too_many_connections: "Many shoppers are searching right now. Try again in a moment.",
  unknown_product: "This product is not in the catalog (any more).",
  sample_not_found: "This sample photo is not available any more.",
  bad_filter: "Check the price filter: prices are numbers from 0 up, the lowest no higher than the highest.",
  network: "The server could not be reached. Check the connection and try again.",
};
const SAY_STATUS = {
  400: "This file is not a photo we can read. Choose a JPEG, PNG or WebP image.",
  404: "That page or picture was not found.",
  408: "The upload took too long. Try again, or with a smaller photo.",
  413: "This photo is too large to upload. Try a smaller copy of it.",
  415: "This image format is not supported. Choose a JPEG, PNG or WebP photo.",
  422: "The request was not accepted. Reload the page and try again.",
  429: "Too many searches at once. Wait a moment and try again.",
  503: "The search is busy or still starting up. Try again in a few seconds.",
};

function showError(error) {
  const banner = $("banner");
  const status = error && error.status;
  const headline =
    (error && SAY[error.code]) ||
    SAY_STATUS[status] ||
    (status >= 500 ? "Something went wrong on our side. Please try again." : null);
  const detail = error && error.message ? error.message : String(error);
  banner.replaceChildren(
    el("strong", {}, headline || detail),
    headline ? el("span", { class: "detail" }, ` (${detail})`) : null,
  );
  banner.dataset.code = (error && error.code) || (status ? String(status) : "page");
  banner.hidden = false;
}

function clearError() {
  $("banner").hidden = true;
}

function score(value) {
  return typeof value === "number" ? value.toFixed(3) : "";
}

function productHash(id) {
  return `#/product/${encodeURIComponent(id)}`;
}

function priceLine(result) {
  const price = typeof result.price === "number" ? result.price.toFixed(2) : null;
  const out = result.in_stock === false ? el("span", { class: "stock" }, price ? " · out of stock" : "out of stock") : null;
  return price || out ? el("div", { class: "price" }, price, out) : null;
}

// "N more listings": the other product ids that list the same picture, each a link.
function listings(ids, what = "more listing") {
  const links = ids.map((id) => el("li", {}, el("a", { href: productHash(id), "data-listing": id }, id)));
  const summary = el("summary", {}, `${ids.length} ${what}${ids.length > 1 ? "s" : ""}`);
  return el("details", { class: "listings" }, summary, el("ul", {}, ...links));
}

// `index`: the result's place in a ranked list (its card's data-position, for click events).
function productCard(result, index) {
  const id = result.product_id;
  const image = result.image_url
    ? el("img", { src: result.image_url, alt: result.title || `product ${id}`, loading: "lazy" })
    : el("div", { class: "noimage" });
  const sub = typeof result.score === "number" ? `${result.category} · ${score(result.score)}` : result.category;
  const card = el(
    "a",
    {
      class: "card",
      href: productHash(id),
      "data-product-id": id,
      "data-position": typeof index === "number" ? index + 1 : null,
    },
    image,
    el("div", { class: "title", title: result.title || id }, result.title || id),
    el("div", { class: "sub" }, sub),
    priceLine(result),
  );
  const others = result.duplicates || [];
  return others.length ? el("div", { class: "result" }, card, listings(others)) : card;
}

// A result list to the click-through log (events.js); a page without that script still works.
function logShown(list) {
  if (typeof shopperEvents !== "undefined") shopperEvents.shown(list);
}

function listing(product) {
  const image = product.images && product.images.length ? product.images[0] : null;
  return { product_id: product.id, title: product.title, category: product.category, image_url: image };
}

function cards(results, empty) {
  const shown = results.map(productCard);
  return shown.length ? shown : [el("p", { class: "meta" }, empty)];
}

// Draw boxes ([x0, y0, x1, y1] in image pixels) over an image whose natural size is known.
// Boxes with a `name` are buttons for the mouse (the page lists the same choices as buttons).
function drawBoxes(overlay, width, height, boxes) {
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  overlay.replaceChildren();
  const size = Math.max(6, Math.max(width, height) / 24); // labels scale with the photo
  const area = ({ box }) => (box[2] - box[0]) * (box[3] - box[1]);
  // the larger first, so a box inside another stays on top, where a click reaches it
  [...boxes].sort((a, b) => area(b) - area(a)).forEach(({ box, label, index, name }) => {
    const [x0, y0, x1, y1] = box;
    const rect = svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, "data-index": index });
    if (name) {
      rect.classList.add("pick");
      const title = svg("title");
      title.textContent = name;
      rect.append(title);
    }
    overlay.append(rect);
    if (label) {
      const text = svg("text", { x: x0 + size / 3, y: y0 + size * 1.1 });
      text.style.fontSize = `${size}px`;
      text.style.strokeWidth = `${size / 5}px`;
      text.textContent = label;
      overlay.append(text);
    }
  });
}

// ---- routing ------------------------------------------------------------------------------

const VIEWS = ["search", "browse", "product", "review"];
const HEADINGS = { search: "search-heading", browse: "browse-heading" };

function showView(name) {
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  const slot = { search: "search-filters", product: "similar-filters" }[name];
  if (slot && $("filters").parentElement.id !== slot) $(slot).append($("filters")); // one set
  const nav = name === "product" ? null : name;
  document.querySelectorAll("[data-nav]").forEach((link) => {
    const here = link.dataset.nav === nav;
    link.classList.toggle("active", here);
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  });
  if (name !== "product") document.title = name === "search" ? "VisNet: visual search" : `VisNet: ${name}`;
}

// After a navigation (not the first load), put the keyboard and screen reader on the new view.
function focusView(id) {
  if (state.routed > 1 && $(id)) $(id).focus({ preventScroll: false });
}

function run(work) {
  Promise.resolve().then(work).catch(showError);
}

function route() {
  clearError();
  state.routed += 1;
  const [path, query] = (location.hash || "#/").slice(1).split("?");
  const params = new URLSearchParams(query || "");
  let match;
  if ((match = path.match(/^\/product\/(.+)$/))) {
    showView("product");
    run(() => showProduct(decodeURIComponent(match[1])));
  } else if ((match = path.match(/^\/browse(?:\/(.+))?$/))) {
    showView("browse");
    const category = match[1] ? decodeURIComponent(match[1]) : "";
    const page = Math.max(1, parseInt(params.get("page"), 10) || 1);
    run(() => showBrowse(category, params.get("after"), page));
  } else if ((match = path.match(/^\/sample\/(.+)$/))) {
    showView("search");
    run(() => searchSample(decodeURIComponent(match[1])));
  } else if (path === "/review") {
    showView("review");
    loadTriplet().catch(showError);
  } else {
    showView("search");
    focusView(HEADINGS.search);
  }
}

// ---- landing: categories and sample photos ----------------------------------------------------

async function loadCategories() {
  const data = await api("/v1/categories");
  for (const id of ["category", "browse-category"]) {
    const select = $(id);
    for (const { name, count } of data.categories) {
      select.append(el("option", { value: name }, `${name} (${count})`));
    }
  }
  const browsing = location.hash.match(/^#\/browse\/([^?]+)/);
  if (browsing) $("browse-category").value = decodeURIComponent(browsing[1]);
  const tiles = data.categories.map(({ name, count }, i) => {
    const picture = el("span", { class: "tile-img", "aria-hidden": "true" });
    if (i < TILE_IMAGES) {
      api(`/v1/products?category=${encodeURIComponent(name)}&limit=1`)
        .then((page) => {
          const first = page.products[0];
          if (first && first.images.length) picture.append(el("img", { src: first.images[0], alt: "", loading: "lazy" }));
        })
        .catch(() => {}); // a tile without a picture is still a link
    }
    const link = el(
      "a",
      { href: browseHash(name), class: "tile", "data-category": name },
      picture,
      el("span", { class: "tile-name" }, name),
      el("span", { class: "tile-count" }, `${count} products`),
    );
    return el("li", {}, link);
  });
  const all = el("a", { href: "#/browse", class: "tile all" }, el("span", { class: "tile-name" }, "Everything"),
    el("span", { class: "tile-count" }, `${data.total} products`));
  $("tiles").replaceChildren(el("li", {}, all), ...tiles);
}

// Offer only the filters the catalog can satisfy: a filter on a field no product has would
// match nothing (the demo catalog has no prices, brands or stock).
async function loadFacets() {
  const data = await api("/v1/facets");
  const options = data.brands.map(({ name, count }) => el("option", { value: name }, `${name} (${count})`));
  $("brand").append(...options);
  $("brand-label").hidden = options.length === 0;
  for (const label of document.querySelectorAll(".price-filter")) label.hidden = data.priced === 0;
  $("stock-label").hidden = data.stocked === 0;
  $("filters").hidden = !options.length && !data.priced && !data.stocked;
}

// The filters as request fields: [name, value] pairs (none when nothing is filtered).
function filterFields() {
  const low = $("min-price");
  const high = $("max-price");
  if (!low.validity.valid || !high.validity.valid || parseFloat(low.value) > parseFloat(high.value)) {
    const error = new Error(`price from ${low.value || "any"} to ${high.value || "any"}`);
    error.code = "bad_filter";
    throw error;
  }
  const fields = [];
  if (low.value !== "") fields.push(["min_price", low.value]);
  if (high.value !== "") fields.push(["max_price", high.value]);
  if ($("brand").value) fields.push(["brand", $("brand").value]);
  if ($("in-stock").checked) fields.push(["in_stock", "true"]);
  return fields;
}

function setupFilters() {
  const changed = () => {
    if (!$("view-product").hidden && state.productId) loadSimilar(state.productId).catch(showError);
    else if (state.file) search().catch(showError);
  };
  // prices apply once typing pauses (or on Enter), not on "change": that fires when the field
  // loses focus, and a new search then would swallow the click on a result that blurred it
  let timer;
  const typed = (event) => {
    clearTimeout(timer);
    if (event.type === "keydown" && event.key !== "Enter") return;
    timer = setTimeout(changed, event.type === "keydown" ? 0 : PRICE_PAUSE_MS);
  };
  for (const id of ["min-price", "max-price"]) {
    $(id).addEventListener("input", typed);
    $(id).addEventListener("keydown", typed);
  }
  for (const id of ["brand", "in-stock"]) $(id).addEventListener("change", changed);
}

async function loadSamples() {
  const data = await api("/v1/samples");
  const items = data.samples.map((sample) => {
    const link = el(
      "a",
      {
        class: "sample",
        href: `#/sample/${encodeURIComponent(sample.name)}`,
        "data-sample": sample.name,
        title: sample.credit ? `${sample.title} · ${sample.credit}` : sample.title,
      },
      el("img", { src: sample.image_url, alt: "", loading: "lazy" }),
      el("span", { class: "sample-title" }, sample.title),
    );
    link.setAttribute("aria-label", `Search with this photo: ${sample.title}`);
    return el("li", {}, link);
  });
  $("samples").replaceChildren(...items);
  $("samples-block").hidden = items.length === 0;
  markSample();
}

function markSample() {
  document.querySelectorAll("#samples .sample").forEach((link) => {
    if (link.dataset.sample === state.sample) link.setAttribute("aria-current", "true");
    else link.removeAttribute("aria-current");
  });
}

// ---- search -------------------------------------------------------------------------------

function pickFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    const error = new Error(`${file.name || "that file"} is a ${file.type} file`);
    error.code = "not_an_image";
    showError(error);
    return;
  }
  if (location.hash !== "#/" && location.hash !== "") {
    history.pushState(null, "", "#/"); // the photo is no sample: leave a sample's address
    showView("search");
  }
  state.file = file;
  state.sample = null;
  markSample();
  search().catch(showError);
}

async function searchSample(name) {
  if (state.sample === name && state.file && $("results").childElementCount) return; // shown
  state.sample = name;
  markSample();
  $("query-meta").textContent = "Loading the sample photo…";
  const response = await fetch(`/v1/samples/${encodeURIComponent(name)}`).catch(() => {
    throw networkError();
  });
  if (!response.ok) answer(response.status, await response.text()); // throws the API's error
  const blob = await response.blob();
  if (state.sample !== name) return; // another photo was chosen meanwhile
  state.file = new File([blob], name, { type: blob.type || "image/jpeg" });
  await search();
}

function setProgress(fraction) {
  const bar = $("upload-progress");
  if (fraction === null) {
    bar.removeAttribute("value"); // indeterminate: the server is working
  } else {
    bar.value = Math.round(100 * fraction);
  }
}

async function search() {
  if (!state.file) return;
  const token = ++state.searchToken;
  clearError();
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = URL.createObjectURL(state.file);
  const frame = $("query").querySelector(".frame");
  frame.hidden = false;
  $("query-img").onerror = () => {
    frame.hidden = true; // the browser cannot show it either: no broken picture
  };
  $("query-img").onload = null;
  $("query-img").src = state.queryUrl;
  $("query-img").alt = state.sample ? `Sample photo: ${state.sample}` : `Your photo${state.file.name ? `: ${state.file.name}` : ""}`;
  $("boxes").replaceChildren();
  $("objects").replaceChildren();
  $("objects").hidden = true;
  $("query").hidden = false;
  $("home").hidden = true;
  $("results").replaceChildren();
  $("results").setAttribute("aria-busy", "true");
  $("query-meta").textContent = "Uploading your photo…";
  $("upload-progress").hidden = false;
  setProgress(0);
  const form = new FormData();
  form.append("image", state.file, state.file.name || "photo.png");
  if ($("category").value) form.append("category", $("category").value);
  form.append("k", $("k").value);
  let filters;
  try {
    filters = filterFields();
  } catch (error) {
    $("upload-progress").hidden = true;
    $("results").removeAttribute("aria-busy");
    $("query-meta").textContent = "Change the filters to search.";
    throw error;
  }
  for (const [name, value] of filters) form.append(name, value);
  try {
    const data = await upload("/v1/search", form, (fraction) => {
      if (token !== state.searchToken) return;
      if (fraction < 1) {
        setProgress(fraction);
        $("query-meta").textContent = `Uploading your photo… ${Math.round(100 * fraction)}%`;
      } else {
        setProgress(null);
        $("query-meta").textContent = "Searching…";
      }
    });
    if (token === state.searchToken) renderSearch(data);
  } catch (error) {
    if (token !== state.searchToken) return;
    $("query-meta").textContent = "This photo could not be searched.";
    if ([400, 413, 415].includes(error.status)) frame.hidden = true;
    throw error;
  } finally {
    if (token === state.searchToken) {
      $("upload-progress").hidden = true;
      $("results").removeAttribute("aria-busy");
    }
  }
}

// The category the service searched the object in (the request's, its nearest catalog
// product's, or the detector's label where the detector was sure of it), never a guess it
// did not trust: a sure product can be an unsure kind.
function shownLabel(query) {
  return query.box ? query.category : null;
}

function objectName(query, index) {
  return `Object ${index + 1}: ${shownLabel(query) || "item"}`;
}

function renderSearch(data) {
  const count = data.queries.reduce((sum, query) => sum + query.results.length, 0);
  const objects = data.queries.filter((query) => query.box).length;
  const found = objects ? `${objects} object${objects > 1 ? "s" : ""} found, ` : "";
  $("query-meta").textContent = `${found}${count} results in ${Math.round(data.took_ms)} ms`;
  $("query-meta").dataset.tookMs = data.took_ms;
  state.activeObject = null;
  const pickable = objects > 1;
  const image = $("query-img");
  const boxes = data.queries
    .map((query, index) => ({
      box: query.box,
      label: pickable ? `${index + 1} ${shownLabel(query) || ""}`.trim() : shownLabel(query),
      index,
      name: pickable ? objectName(query, index) : null,
    }))
    .filter((item) => item.box);
  const draw = () => drawBoxes($("boxes"), image.naturalWidth, image.naturalHeight, boxes);
  if (image.complete && image.naturalWidth) draw();
  else image.onload = draw;
  const sections = data.queries.map((query, index) => {
    const title = query.box ? `${objectName(query, index)} (${score(query.score)})` : "Results";
    const filter = query.category && !query.box ? ` in ${query.category}` : ""; // else in the name
    const heading = el("h2", { id: `object-${index}`, tabindex: "-1" }, title + filter);
    const grid = el("div", { class: "grid", "data-query-id": query.query_id }, ...query.results.map(productCard));
    const empty = query.results.length ? null : el("p", { class: "meta" }, "No products found.");
    const attrs = { class: "object", id: `object-list-${index}`, "data-index": index, "aria-labelledby": `object-${index}` };
    return el("section", attrs, heading, grid, empty);
  });
  $("results").replaceChildren(...sections);
  for (const query of data.queries) {
    logShown({
      kind: "search",
      queryId: query.query_id,
      model: data.model,
      index: data.index,
      queryImage: query.query_image,
      products: query.results.map((result) => result.product_id),
    });
  }
  const buttons = pickable
    ? data.queries.map((query, index) =>
        el("button", { type: "button", "data-index": index, "aria-pressed": "false", "aria-controls": `object-list-${index}` },
          objectName(query, index)))
    : [];
  if (buttons.length) {
    const all = el("button", { type: "button", "data-index": "all", "aria-pressed": "true" }, "All objects");
    $("objects").replaceChildren(el("span", { class: "meta" }, "Shop the look: pick an object"), all, ...buttons);
  }
  $("objects").hidden = !buttons.length;
}

// Show one detected object's results (null: every object's), and mark its box and button.
function selectObject(index, focus = true) {
  state.activeObject = state.activeObject === index ? null : index;
  const active = state.activeObject;
  document.querySelectorAll("#results section.object").forEach((section) => {
    const mine = Number(section.dataset.index) === active;
    section.hidden = active !== null && !mine;
    section.classList.toggle("active", mine);
  });
  document.querySelectorAll("#boxes rect").forEach((rect) => {
    rect.classList.toggle("active", Number(rect.dataset.index) === active);
  });
  document.querySelectorAll("#objects button").forEach((button) => {
    const mine = button.dataset.index === "all" ? active === null : Number(button.dataset.index) === active;
    button.setAttribute("aria-pressed", String(mine));
  });
  if (focus && active !== null) {
    const heading = $(`object-${active}`);
    heading.focus({ preventScroll: true });
    heading.scrollIntoView({ block: "nearest" });
  }
}

function setupSearch() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    pickFile(event.target.files[0]);
    event.target.value = ""; // the same file again is a new search
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pickFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData || { items: [] }).items].find((i) => i.type.startsWith("image/"));
    if (!item) return;
    if (location.hash.startsWith("#/review")) return;
    pickFile(item.getAsFile());
  });
  $("category").addEventListener("change", () => search().catch(showError));
  $("k").addEventListener("change", () => search().catch(showError));
  $("boxes").addEventListener("click", (event) => {
    const rect = event.target.closest("rect.pick");
    if (rect) selectObject(Number(rect.dataset.index));
  });
  $("objects").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.index === "all") {
      state.activeObject = null;
      selectObject(null, false);
    } else {
      selectObject(Number(button.dataset.index));
    }
  });
  $("skip-link").addEventListener("click", (event) => {
    event.preventDefault(); // "#main" is no route
    $("main").focus();
  });
}

// ---- browse -------------------------------------------------------------------------------

function browseHash(category, after = null, page = 1) {
  const path = category ? `#/browse/${encodeURIComponent(category)}` : "#/browse";
  if (!after || page <= 1) return path;
  return `${path}?${new URLSearchParams({ after, page: String(page) })}`;
}

async function showBrowse(category, after, page) {
  const key = category || "";
  if (state.browse.key !== key) state.browse = { key, cursors: [] };
  state.browse.cursors[page - 1] = page > 1 ? after : null;
  $("browse-category").value = category;
  $("browse-heading").textContent = category ? `Catalog: ${category}` : "Catalog";
  document.title = `VisNet: ${category || "catalog"}`;
  $("browse-meta").textContent = "Loading…";
  $("browse-grid").setAttribute("aria-busy", "true");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (category) params.set("category", category);
  if (after && page > 1) params.set("cursor", after);
  const data = await api(`/v1/products?${params}`);
  if (state.browse.key !== key) return;
  $("browse-grid").replaceChildren(...cards(data.products.map(listing), "No products in this category."));
  $("browse-grid").removeAttribute("aria-busy");
  $("browse-grid").dataset.page = String(page);
  const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  const where = category ? ` in ${category}` : "";
  $("browse-meta").textContent = `Page ${page} of ${pages} · ${data.total} products${where}`;
  const next = $("next-page");
  next.hidden = !data.next_cursor;
  if (data.next_cursor) next.href = browseHash(category, data.next_cursor, page + 1);
  const prev = $("prev-page");
  prev.hidden = page <= 1;
  const known = state.browse.cursors[page - 2];
  prev.href = known !== undefined ? browseHash(category, known, page - 1) : browseHash(category);
  prev.textContent = known !== undefined || page === 2 ? "\u2190 Previous page" : "\u2190 First page";
  focusView("browse-heading");
}

function setupBrowse() {
  $("browse-category").addEventListener("change", (event) => {
    location.hash = browseHash(event.target.value);
  });
}

// ---- product ------------------------------------------------------------------------------

async function showProduct(id) {
  state.productId = id;
  $("product").replaceChildren(el("p", { class: "meta" }, "Loading…"));
  $("similar").replaceChildren();
  $("similar-meta").textContent = "";
  const path = `/v1/products/${encodeURIComponent(id)}`;
  // a bad filter says so, and the product still shows
  const [product] = await Promise.all([api(path), loadSimilar(id).catch(showError)]);
  if (state.productId !== id) return;
  const name = product.title || product.id;
  const gallery = el("div", { class: "gallery" },
    ...product.images.map((url, view) => el("img", { src: url, alt: `${name}, view ${view + 1} of ${product.images.length}` })));
  const facts = el("dl", {});
  const category = el("a", { href: browseHash(product.category) }, product.category);
  const rows = [["category", category], ["id", product.id]];
  if (product.brand) rows.push(["brand", product.brand]);
  if (product.in_stock !== null && product.in_stock !== undefined) rows.push(["in stock", product.in_stock ? "yes" : "no"]);
  rows.push(...Object.entries(product.attributes || {}));
  for (const [label, value] of rows) {
    const shown = value instanceof Node || typeof value !== "object" ? value : JSON.stringify(value);
    facts.append(el("dt", {}, label), el("dd", {}, shown));
  }
  const heading = el("h1", { tabindex: "-1", id: "product-heading" }, name);
  const offer = priceLine(product);
  $("product").replaceChildren(gallery, el("div", {}, heading, offer, facts));
  $("product").dataset.productId = product.id;
  document.title = `${name} · VisNet`;
  focusView("product-heading");
}

// "More like this": same category only, or any; says whether the list was stored or searched.
async function loadSimilar(id) {
  const same = $("same-category").checked;
  const filters = filterFields();
  const params = new URLSearchParams([["k", String(SIMILAR_K)], ["same_category", String(same)], ...filters]);
  const asked = params.toString();
  state.similarAsked = asked;
  $("similar").setAttribute("aria-busy", "true");
  const data = await api(`/v1/products/${encodeURIComponent(id)}/similar?${asked}`);
  if (state.productId !== id || state.similarAsked !== asked) return;
  $("similar").replaceChildren(...cards(data.results, "Nothing similar yet."));
  $("similar").removeAttribute("aria-busy");
  $("similar").dataset.source = data.source;
  $("similar").dataset.queryId = data.query_id || "";
  logShown({
    kind: "similar",
    queryId: data.query_id,
    model: data.model,
    index: data.index,
    anchor: data.product_id,
    products: data.results.map((result) => result.product_id),
  });
  const own = data.duplicates || [];
  $("listings").replaceChildren(...(own.length ? [listings(own, "more listing")] : []));
  $("listings").hidden = own.length === 0;
  const scope = same ? "in the same category" : "in every category";
  const filtered = filters.length ? " that pass the filters" : "";
  const how = data.source === "precomputed"
    ? "precomputed when the catalog was indexed"
    : "computed live, just now";
  $("similar-meta").textContent = `${data.results.length} products ${scope}${filtered}, ${how}.`;
}

function setupProduct() {
  $("same-category").addEventListener("change", () => {
    if (state.productId) loadSimilar(state.productId).catch(showError);
  });
  $("back").addEventListener("click", (event) => {
    if (state.routed > 1) {
      event.preventDefault();
      history.back(); // to the results or the catalog page the product was opened from
    }
  });
}

// ---- review -------------------------------------------------------------------------------

function member(role, data) {
  const image = el("img", { src: data.image_url, alt: `${role} image` });
  const overlay = svg("svg", { class: "boxes", preserveAspectRatio: "none" });
  if (data.bbox) {
    const { left, top, width, height } = data.bbox;
    image.addEventListener("load", () =>
      drawBoxes(overlay, image.naturalWidth, image.naturalHeight, [{ box: [left, top, left + width, top + height] }]));
  }
  const caption = el("figcaption", {}, el("b", {}, role), data.product ? `product ${data.product}` : data.image);
  return el("figure", { class: role }, el("div", { class: "frame" }, image, overlay), caption);
}

function renderStats(counts) {
  const decided = counts.approved + counts.rejected;
  const share = counts.total ? (100 * decided) / counts.total : 0;
  $("progress-bar").style.width = `${share.toFixed(1)}%`;
  $("review-stats").textContent =
    `${decided} of ${counts.total} reviewed · ${counts.approved} approved · ${counts.rejected} rejected · ${counts.pending} pending`;
}

function renderTriplet(data) {
  renderStats(data.counts);
  state.triplet = data.triplet;
  const box = $("triplet");
  for (const id of ["approve", "reject", "skip"]) $(id).disabled = !data.triplet;
  if (!data.triplet) {
    box.replaceChildren(el("div", { class: "done" }, "No triplets are waiting for review."));
    delete box.dataset.tripletId;
    return;
  }
  const t = data.triplet;
  box.dataset.tripletId = t.id;
  box.replaceChildren(member("query", t.query), member("positive", t.positive), member("negative", t.negative));
  const kind = t.notes.negative_kind ? `, ${t.notes.negative_kind} negative` : "";
  $("review-stats").append(` · triplet #${t.id} (${t.kind}${t.category ? `, ${t.category}` : ""}${kind})`);
}

async function loadTriplet() {
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("reviewer").value = localStorage.getItem(REVIEWER_STORE) || "";
  renderTriplet(await api(`/v1/review/next?after=${state.afterTriplet}`));
}

async function decide(status) {
  const triplet = state.triplet;
  if (!triplet || state.busy) return;
  const key = $("api-key").value.trim();
  if (!key) {
    showError(new Error("Enter the API key to record decisions."));
    $("api-key").focus();
    return;
  }
  state.busy = true;
  try {
    clearError();
    const headers = { "Content-Type": "application/json", "X-API-Key": key };
    const reviewer = $("reviewer").value.trim() || "web";
    await api(`/v1/review/${triplet.id}`, { method: "POST", headers, body: JSON.stringify({ status, reviewer }) });
    state.afterTriplet = triplet.id;
    renderTriplet(await api(`/v1/review/next?after=${state.afterTriplet}`));
  } finally {
    state.busy = false;
  }
}

async function skip() {
  if (!state.triplet) return;
  state.afterTriplet = state.triplet.id;
  renderTriplet(await api(`/v1/review/next?after=${state.afterTriplet}`));
}

function setupReview() {
  $("api-key").addEventListener("change", (event) => sessionStorage.setItem(KEY_STORE, event.target.value.trim()));
  $("reviewer").addEventListener("change", (event) => localStorage.setItem(REVIEWER_STORE, event.target.value.trim()));
  $("key-form").addEventListener("submit", (event) => event.preventDefault());
  $("approve").addEventListener("click", () => decide("approved").catch(showError));
  $("reject").addEventListener("click", () => decide("rejected").catch(showError));
  $("skip").addEventListener("click", () => skip().catch(showError));
  document.addEventListener("keydown", (event) => {
    if ($("view-review").hidden || event.target.matches("input, select, textarea")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const action = { a: () => decide("approved"), r: () => decide("rejected"), s: skip }[event.key.toLowerCase()];
    if (action) {
      event.preventDefault();
      action().catch(showError);
    }
  });
}

// ---- start --------------------------------------------------------------------------------

setupSearch();
setupFilters();
setupBrowse();
setupProduct();
setupReview();
window.addEventListener("hashchange", route);
route();
loadCategories().catch(showError);
loadFacets().catch(() => {}); // unknown: the filters stay hidden
loadSamples().catch(() => {}); // no samples: no strip, nothing to tell the shopper
