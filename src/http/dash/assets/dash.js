// palmgate dashboards: helpers both dashboard scripts use (no framework, no external code).
// PG.t(key, vars) translates; PG.api(method, path, body) calls the JSON APIs with the login
// cookie and the CSRF header; PG.h(tag, attrs, ...children) builds DOM nodes (text is always
// set as text, never as HTML); PG.stream(path, onEvent) follows a server-sent event stream.
"use strict";
(function () {
  const root = document.getElementById("app");
  const messages = JSON.parse(document.getElementById("messages").textContent);
  const csrf = root.dataset.csrf;

  // A value from outside (an external id, a username, a partner or reader name) set apart from
  // the text around it: U+2068 FIRST STRONG ISOLATE … U+2069 POP DIRECTIONAL ISOLATE, so an
  // RTL override or an Arabic or Hebrew name inside it cannot reorder the sentence.
  const iso = (v) => "\u2068" + String(v) + "\u2069";

  // Every value t() substitutes is isolated (numbers and translated words too: harmless).
  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(messages, key) ? messages[key] : key;
    if (vars) for (const k of Object.keys(vars)) s = s.split("{" + k + "}").join(iso(vars[k]));
    return s;
  }

  // A refused API call: its status, the server's own (English) message, and what the
  // translated text needs (method and path of the call, Retry-After seconds).
  class ApiError extends Error {
    constructor(status, message, info) {
      super(message);
      this.status = status;
      this.method = (info && info.method) || "GET";
      this.path = (info && info.path) || "";
      this.retryAfter = info && info.retryAfter ? info.retryAfter : null;
    }
  }

  // The ApiError of a refused response (data: its parsed body).
  function refusal(r, data, method, path) {
    const msg = data && data.message ? data.message : r.status + " " + r.statusText;
    const retry = Number(r.headers.get("Retry-After"));
    return new ApiError(r.status, msg, { method, path, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null });
  }

  // The 409 refusals of the API (core::Rejection), by the server's message.
  const CONFLICTS = [
    [/already enrolled/i, "error.conflict.already_enrolled"],
    [/session is not pending/i, "error.conflict.session_not_pending"],
    [/Idempotency-Key/i, "error.conflict.idempotency"],
    [/partner already exists/i, "error.conflict.partner_exists"],
    [/reader is offline/i, "error.conflict.reader_offline"],
    [/reader is busy/i, "error.conflict.reader_busy"],
    [/reader belongs to a door/i, "error.conflict.reader_at_door"],
  ];

  // The key of a known refusal, or null.
  function refusalKey(e) {
    const path = String(e.path || "").split("?")[0];
    switch (e.status) {
      case 401: return "error.session";
      case 403: return "error.forbidden";
      case 409: {
        const hit = CONFLICTS.find(([re]) => re.test(e.message));
        return hit ? hit[1] : "error.conflict";
      }
      case 413: return "error.too_large";
      case 429: return e.retryAfter ? "error.rate_limited_for" : "error.rate_limited";
      case 503: return "error.unavailable";
      case 500: return "error.internal";
      case 400: return e.method === "PUT" && path === "/v1/webhook" ? "error.webhook_url" : null;
      default: return null;
    }
  }

  // What to tell the person about a failure, in the page's language: a known API refusal by
  // its own message, with the server's text as a detail; anything else in the generic frame.
  function errorText(e) {
    const key = e instanceof ApiError ? refusalKey(e) : null;
    if (!key) return t("error.generic", { message: e && e.message ? e.message : String(e) });
    const text = t(key, { seconds: e.retryAfter });
    return e.message ? t("error.detail", { text, detail: e.message }) : text;
  }

  async function api(method, path, body, opts) {
    const headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
    let payload;
    if (body !== undefined && body !== null) {
      if (typeof body === "string") {
        headers["Content-Type"] = (opts && opts.contentType) || "text/plain";
        payload = body;
      } else {
        headers["Content-Type"] = "application/json";
        payload = JSON.stringify(body);
      }
    }
    const r = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!r.ok) {
      if (r.status === 401) showError(t("error.session"));
      throw refusal(r, data, method, path);
    }
    return data;
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  let errorBox = null;
  function showError(text) {
    if (!errorBox) {
      errorBox = h("p", { class: "error", role: "alert", id: "error" });
      root.before(errorBox);
    }
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  // Runs an async action, turning a failure into a visible message.
  async function attempt(fn) {
    try {
      showError("");
      return await fn();
    } catch (e) {
      showError(errorText(e));
      return undefined;
    }
  }

  // A confirmation dialog (keyboard: Esc cancels, focus starts on Cancel).
  function confirmDialog(text) {
    return new Promise((resolve) => {
      const d = h("dialog", { "aria-labelledby": "confirm-text" },
        h("p", { id: "confirm-text" }, text),
        h("div", { class: "row" },
          h("button", { type: "button", class: "danger", id: "confirm-yes",
            onclick: () => { d.close(); resolve(true); } }, t("confirm")),
          h("button", { type: "button", id: "confirm-no",
            onclick: () => { d.close(); resolve(false); } }, t("cancel"))));
      d.addEventListener("cancel", () => resolve(false));
      d.addEventListener("close", () => d.remove());
      document.body.append(d);
      d.showModal();
      d.querySelector("#confirm-no").focus();
    });
  }

  function stream(path, onEvent) {
    const es = new EventSource(path, { withCredentials: true });
    es.onmessage = (m) => {
      try { onEvent(JSON.parse(m.data)); } catch (_) { /* ignore a malformed line */ }
    };
    return es;
  }

  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(document.documentElement.lang);
  }

  // Accessible tabs: buttons with role=tab, panels shown one at a time.
  function tabs(list) {
    const bar = h("div", { class: "tabs", role: "tablist" });
    const panels = [];
    list.forEach((tab, i) => {
      const b = h("button", { type: "button", role: "tab", id: "tab-" + tab.id,
        "aria-controls": "panel-" + tab.id, "aria-selected": i === 0 ? "true" : "false" }, tab.label);
      const p = h("section", { role: "tabpanel", id: "panel-" + tab.id, "aria-labelledby": "tab-" + tab.id });
      p.hidden = i !== 0;
      b.addEventListener("click", () => {
        for (const x of bar.children) x.setAttribute("aria-selected", x === b ? "true" : "false");
        for (const q of panels) q.hidden = q !== p;
        if (tab.onshow) tab.onshow(p);
      });
      bar.append(b);
      panels.push(p);
      tab.panel = p;
    });
    return { bar, panels };
  }

  // Re-enables a button disabled while its request ran. Disabling the focused button sent focus
  // to <body> (WCAG 2.4.3): it gets focus back unless the user moved on meanwhile.
  function enable(button) {
    const lost = !document.activeElement || document.activeElement === document.body;
    button.disabled = false;
    if (lost && button.isConnected) button.focus();
  }

  window.PG = { t, iso, api, h, showError, attempt, confirmDialog, stream, time, tabs, root, ApiError, refusal, errorText, enable };
})();
