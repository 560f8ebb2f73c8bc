// VisNet web page: search by photo, product view with "more like this", triplet review.
// Plain JavaScript, no build step. Every value from the server goes in as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KEY_STORE = "visnet.apiKey";
const REVIEWER_STORE = "visnet.reviewer";
const state = { file: null, queryUrl: null, afterTriplet: 0, triplet: null, busy: false };

// ---- helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
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

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = new Error(body && body.message ? body.message : `HTTP ${response.status}`);
    error.code = body && body.error;
    error.status = response.status;
    throw error;
  }
  return body;
}

function showError(error) {
  const banner = $("banner");
  banner.textContent = error.message || String(error);
  banner.hidden = false;
}

function clearError() {
  $("banner").hidden = true;
}

function score(value) {
  return typeof value === "number" ? value.toFixed(3) : "";
}

function productCard(result) {
  const id = result.product_id;
  const image = result.image_url
    ? el("img", { src: result.image_url, alt: result.title || id, loading: "lazy" })
    : el("div", { class: "noimage" });
  return el(
    "a",
    { class: "card", href: `#/product/${encodeURIComponent(id)}`, "data-product-id": id },
    image,
    el("div", { class: "title", title: result.title || id }, result.title || id),
    el("div", { class: "sub" }, `${result.category} · ${score(result.score)}`),
  );
}

// Draw boxes ([x0, y0, x1, y1] in image pixels) over an image whose natural size is known.
function drawBoxes(overlay, width, height, boxes) {
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  overlay.replaceChildren();
  const size = Math.max(6, Math.max(width, height) / 24); // labels scale with the photo
  boxes.forEach(({ box, label, index }) => {
    const [x0, y0, x1, y1] = box;
    overlay.append(svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, "data-index": index }));
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

function showView(name) {
  for (const view of ["search", "product", "review"]) $(`view-${view}`).hidden = view !== name;
  document.querySelectorAll("[data-nav]").forEach((link) => {
    link.classList.toggle("active", link.dataset.nav === (name === "product" ? "search" : name));
  });
}

function route() {
  clearError();
  const hash = location.hash || "#/";
  const product = hash.match(/^#\/product\/(.+)$/);
  if (product) {
    showView("product");
    Promise.resolve()
      .then(() => showProduct(decodeURIComponent(product[1])))
      .catch(showError);
  } else if (hash === "#/review") {
    showView("review");
    loadTriplet().catch(showError);
  } else {
    showView("search");
  }
}

// ---- search -------------------------------------------------------------------------------

async function loadCategories() {
  const data = await api("/v1/categories");
  const select = $("category");
  for (const { name, count } of data.categories) {
    select.append(el("option", { value: name }, `${name} (${count})`));
  }
}

function pickFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(new Error(`${file.name || "that file"} is not an image`));
    return;
  }
  state.file = file;
  search().catch(showError);
}

async function search() {
  if (!state.file) return;
  clearError();
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = URL.createObjectURL(state.file);
  $("query-img").onload = null;
  $("query-img").src = state.queryUrl;
  $("boxes").replaceChildren();
  $("query").hidden = false;
  $("query-meta").textContent = "Searching…";
  $("results").replaceChildren();
  const form = new FormData();
  form.append("image", state.file, state.file.name || "photo.png");
  if ($("category").value) form.append("category", $("category").value);
  form.append("k", $("k").value);
  const data = await api("/v1/search", { method: "POST", body: form });
  renderSearch(data);
}

// The detector's category, where it is at least even odds (a sure product can be an unsure kind).
function shownLabel(query) {
  return query.label && (query.label_score ?? 1) >= 0.5 ? query.label : null;
}

function renderSearch(data) {
  const count = data.queries.reduce((sum, query) => sum + query.results.length, 0);
  const objects = data.queries.filter((query) => query.box).length;
  const found = objects ? `${objects} object${objects > 1 ? "s" : ""} found, ` : "";
  $("query-meta").textContent = `${found}${count} results in ${Math.round(data.took_ms)} ms`;
  const image = $("query-img");
  const boxes = data.queries
    .map((query, index) => ({ box: query.box, label: shownLabel(query), index }))
    .filter((item) => item.box);
  const draw = () => drawBoxes($("boxes"), image.naturalWidth, image.naturalHeight, boxes);
  if (image.complete && image.naturalWidth) draw();
  else image.onload = draw;
  const sections = data.queries.map((query, index) => {
    const title = query.box
      ? `Object ${index + 1}: ${shownLabel(query) || "item"} (${score(query.score)})`
      : "Results";
    const filter = query.category ? ` in ${query.category}` : "";
    const grid = el("div", { class: "grid" }, ...query.results.map(productCard));
    const empty = query.results.length ? null : el("p", { class: "meta" }, "No products found.");
    return el("section", { class: "object", "data-index": index }, el("h2", {}, title + filter), grid, empty);
  });
  $("results").replaceChildren(...sections);
}

function setupSearch() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => pickFile(event.target.files[0]));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
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
    location.hash = "#/";
    pickFile(item.getAsFile());
  });
  $("category").addEventListener("change", () => search().catch(showError));
  $("k").addEventListener("change", () => search().catch(showError));
}

// ---- product ------------------------------------------------------------------------------

async function showProduct(id) {
  $("product").replaceChildren(el("p", { class: "meta" }, "Loading…"));
  $("similar").replaceChildren();
  const path = `/v1/products/${encodeURIComponent(id)}`;
  const [product, similar] = await Promise.all([api(path), api(`${path}/similar?k=12`)]);
  const gallery = el("div", { class: "gallery" },
    ...product.images.map((url, view) => el("img", { src: url, alt: `${product.title || id}, view ${view + 1}` })));
  const facts = el("dl", {});
  const rows = [["id", product.id], ["category", product.category], ...Object.entries(product.attributes || {})];
  for (const [name, value] of rows) {
    facts.append(el("dt", {}, name), el("dd", {}, typeof value === "object" ? JSON.stringify(value) : value));
  }
  const info = el("div", {}, el("h1", {}, product.title || product.id), facts);
  $("product").replaceChildren(gallery, info);
  $("product").dataset.productId = product.id;
  const cards = similar.results.map(productCard);
  $("similar").replaceChildren(...(cards.length ? cards : [el("p", { class: "meta" }, "Nothing similar yet.")]));
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
setupReview();
window.addEventListener("hashchange", route);
route();
loadCategories().catch(showError);
