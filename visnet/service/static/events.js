// Shopper events for the click-through report (POST /v1/events): each result list the page
// shows (an impression: the product ids by position, the list's kind and query id, the model
// and index that ranked it) and each result opened (a click), sent in batches a few seconds
// apart, at once after a click, and when the page is hidden. The only thing about the shopper
// is an opaque random session id, kept in sessionStorage (gone when the tab closes).
// Best effort: a failed or refused send is never shown and never breaks the page.
"use strict";

const shopperEvents = (() => {
  const URL = "/v1/events";
  const SESSION_STORE = "visnet.session";
  const ID = /^[A-Za-z0-9_-]{8,64}$/; // the service's session and query id rule
  const FLUSH_MS = 3000; // impressions wait this long for company
  const MAX_BATCH = 50; // events a request (the service takes 100)
  const MAX_QUEUE = 200; // events kept while the service cannot take them; the oldest go first
  const MAX_SHOWN = 100; // positions one impression names
  const PAUSE_MS = 10000; // after a failed send, before the next try
  let queue = [];
  let timer = null;
  let pausedUntil = 0;
  let memorySession = null; // when sessionStorage is blocked: this page's own

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function session() {
    try {
      let id = sessionStorage.getItem(SESSION_STORE);
      if (!id || !ID.test(id)) {
        id = randomId();
        sessionStorage.setItem(SESSION_STORE, id);
      }
      return id;
    } catch (_) {
      memorySession = memorySession || randomId();
      return memorySession;
    }
  }

  function add(event, now) {
    queue.push(event);
    if (queue.length > MAX_QUEUE) queue = queue.slice(queue.length - MAX_QUEUE);
    if (now) flush(false);
    else if (timer === null) timer = setTimeout(() => flush(false), FLUSH_MS);
  }

  // Put a batch the service could not take back in front, and wait before trying again.
  function later(batch, seconds) {
    queue = batch.concat(queue).slice(-MAX_QUEUE);
    pausedUntil = Date.now() + (seconds > 0 ? 1000 * seconds : PAUSE_MS);
    if (timer === null) timer = setTimeout(() => flush(false), pausedUntil - Date.now());
  }

  function send(batch, body) {
    // keepalive (the send outlives a navigation) holds at most 64 KiB in flight
    const keepalive = body.length < 60000;
    const headers = { "Content-Type": "application/json" };
    fetch(URL, { method: "POST", headers, body, keepalive })
      .then((response) => {
        // busy or over this address's share: again later; any other refusal would be again
        if (response.status === 429 || response.status === 503) {
          later(batch, parseInt(response.headers.get("Retry-After"), 10));
        }
      })
      .catch(() => later(batch, 0));
  }

  // Send what waits; `leaving`: the page is being hidden, so sendBeacon, which outlives it.
  function flush(leaving) {
    clearTimeout(timer);
    timer = null;
    try {
      if (!queue.length) return;
      if (!leaving && Date.now() < pausedUntil) {
        timer = setTimeout(() => flush(false), pausedUntil - Date.now()); // still waiting
        return;
      }
      while (queue.length) {
        const batch = queue.splice(0, MAX_BATCH);
        const body = JSON.stringify({ session: session(), events: batch });
        // a beacon goes as text/plain (no preflight); the service reads it as JSON
        const beaconed = leaving && navigator.sendBeacon && navigator.sendBeacon(URL, body);
        if (!beaconed) send(batch, body);
      }
    } catch (_) {
      queue = []; // never a reason to break the page
    }
  }

  // A result list as shown: {kind: "search" | "similar", queryId, model, index, anchor (similar),
  // queryImage (search), products: [ids in order]}. Lists without a query id are not logged.
  function shown(list) {
    try {
      if (!list.queryId || !ID.test(list.queryId) || !list.model || !list.products.length) return;
      const event = {
        type: "impression",
        query_id: list.queryId,
        query_kind: list.kind,
        model: list.model,
        shown: list.products.slice(0, MAX_SHOWN).map((product, i) => ({ product, position: i + 1 })),
      };
      if (list.index) event.index = list.index;
      if (list.kind === "similar") event.anchor = list.anchor;
      if (list.kind === "search" && list.queryImage) event.query_image = list.queryImage;
      add(event, false);
    } catch (_) {
      // a list not logged is no reason to break the page
    }
  }

  function clicked(queryId, product, position) {
    try {
      if (!ID.test(queryId) || !(position >= 1 && position <= MAX_SHOWN)) return;
      add({ type: "click", query_id: queryId, product, position }, true);
    } catch (_) {
      // ditto
    }
  }

  // A click on a result card of a logged list: the card knows its position, the list its id.
  document.addEventListener(
    "click",
    (event) => {
      const card = event.target.closest && event.target.closest("a.card[data-position]");
      const list = card && card.closest("[data-query-id]");
      if (list) clicked(list.dataset.queryId, card.dataset.productId, Number(card.dataset.position));
    },
    true,
  );
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") flush(true);
  });
  window.addEventListener("pagehide", () => flush(true));

  return { shown, clicked, flush };
})();
