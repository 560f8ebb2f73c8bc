// Shopper events for the click-through report (POST /v1/events): each result list the page
// shows (an impression: the product ids by position, the list's kind and query id, the model
// and index that ranked it) and each result opened (a click), sent in batches a few seconds
// apart, at once after a click, and when the page is hidden. The only thing about the shopper
// is an opaque random session id, kept in sessionStorage (gone when the tab closes).
// A hidden page sends with navigator.sendBeacon, whose requests (like keepalive fetches) may hold
// only 64 KiB in flight together: what waits goes in batches under 60 kB while they fit, and the
// rest waits in sessionStorage for the tab's next page (or this one, shown again).
// Best effort: a failed or refused send is never shown and never breaks the page.
"use strict";

const shopperEvents = (() => {
  const URL = "/v1/events";
  const SESSION_STORE = "visnet.session";
  const PENDING_STORE = "visnet.pending"; // what a hidden page could not send, for the next one
  const ID = /^[A-Za-z0-9_-]{8,64}$/; // the service's session and query id rule
  const FLUSH_MS = 3000; // impressions wait this long for company
  const MAX_BATCH = 50; // events a request (the service takes 100)
  const MAX_QUEUE = 200; // events kept while the service cannot take them; the oldest go first
  const MAX_SHOWN = 100; // positions one impression names
  const PAUSE_MS = 10000; // after a failed send, before the next try
  const MAX_BODY = 60000; // bytes a request body (UTF-8)
  const BEACON_BYTES = 64000; // bytes of beacons a hidden page sends at once: 64 KiB in flight
  const encoder = new TextEncoder();
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

  function send(batch, body, keepalive = true) {
    // keepalive: the send outlives a navigation, but only within the 64 KiB in flight; when
    // that is taken, the same request without it
    const headers = { "Content-Type": "application/json" };
    fetch(URL, { method: "POST", headers, body, keepalive })
      .then((response) => {
        // busy or over this address's share: again later; any other refusal would be again
        if (response.status === 429 || response.status === 503) {
          later(batch, parseInt(response.headers.get("Retry-After"), 10));
        }
      })
      .catch(() => (keepalive ? send(batch, body, false) : later(batch, 0)));
  }

  // Events as request bodies, in order: each at most MAX_BATCH events and MAX_BODY bytes (an
  // event bigger than that alone, which the page never makes, goes alone).
  function batches(events, sessionId) {
    const bytes = (text) => encoder.encode(text).length;
    const empty = bytes(JSON.stringify({ session: sessionId, events: [] }));
    const out = [];
    let batch = [];
    let size = empty;
    const close = () => {
      const body = JSON.stringify({ session: sessionId, events: batch });
      if (batch.length) out.push({ batch, body, size });
      batch = [];
      size = empty;
    };
    for (const event of events) {
      const more = bytes(JSON.stringify(event));
      if (batch.length >= MAX_BATCH || (batch.length && size + 1 + more > MAX_BODY)) close();
      size += (batch.length ? 1 : 0) + more;
      batch.push(event);
    }
    close();
    return out;
  }

  // Keep events, after those kept already, for the tab's next page (sessionStorage); false when
  // storage is blocked.
  function keep(events) {
    try {
      const kept = JSON.parse(sessionStorage.getItem(PENDING_STORE) || "[]");
      const all = (Array.isArray(kept) ? kept : []).concat(events).slice(-MAX_QUEUE);
      sessionStorage.setItem(PENDING_STORE, JSON.stringify(all));
      return true;
    } catch (_) {
      return false;
    }
  }

  // Take back what an earlier page of this tab (or this page, hidden) kept, to send soon.
  function restore() {
    try {
      const kept = JSON.parse(sessionStorage.getItem(PENDING_STORE) || "[]");
      sessionStorage.removeItem(PENDING_STORE);
      if (!Array.isArray(kept) || !kept.length) return;
      queue = kept.concat(queue).slice(-MAX_QUEUE);
      if (timer === null) timer = setTimeout(() => flush(false), FLUSH_MS);
    } catch (_) {
      // nothing kept, or storage blocked
    }
  }

  // Send what waits; `leaving`: the page is being hidden, so beacons, which outlive it, as many
  // as the browser takes at once, and the rest kept for the next page.
  function flush(leaving) {
    clearTimeout(timer);
    timer = null;
    try {
      if (!queue.length) return;
      if (!leaving && Date.now() < pausedUntil) {
        timer = setTimeout(() => flush(false), pausedUntil - Date.now()); // still waiting
        return;
      }
      const waiting = queue;
      queue = [];
      let room = leaving && navigator.sendBeacon ? BEACON_BYTES : 0;
      let unsent = [];
      for (const { batch, body, size } of batches(waiting, session())) {
        if (!leaving) send(batch, body);
        // a beacon goes as text/plain (no preflight); the service reads it as JSON
        else if (size <= room && navigator.sendBeacon(URL, body)) room -= size;
        else unsent = unsent.concat(batch);
      }
      if (unsent.length && !keep(unsent)) {
        batches(unsent, session()).forEach((b) => send(b.batch, b.body, false)); // best effort
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
    else restore(); // shown again: what it kept goes from here
  });
  window.addEventListener("pagehide", () => flush(true));
  restore(); // what the tab's previous page could not send

  return { shown, clicked, flush, batches };
})();
