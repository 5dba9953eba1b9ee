// palmgate dashboards: helpers both dashboard scripts use (no framework, no external code).
// PG.t(key, vars) translates; PG.api(method, path, body) calls the JSON APIs with the login
// cookie and the CSRF header; PG.h(tag, attrs, ...children) builds DOM nodes (text is always
// set as text, never as HTML); PG.stream(path, onEvent) follows a server-sent event stream.
"use strict";
(function () {
  const root = document.getElementById("app");
  const messages = JSON.parse(document.getElementById("messages").textContent);
  const csrf = root.dataset.csrf;

  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(messages, key) ? messages[key] : key;
    if (vars) for (const k of Object.keys(vars)) s = s.split("{" + k + "}").join(String(vars[k]));
    return s;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
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
      const msg = data && data.message ? data.message : r.status + " " + r.statusText;
      throw new ApiError(r.status, msg);
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
      showError(t("error.generic", { message: e.message }));
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

  window.PG = { t, api, h, showError, attempt, confirmDialog, stream, time, tabs, root, ApiError };
})();
