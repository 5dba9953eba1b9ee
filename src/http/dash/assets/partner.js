// palmgate partner dashboard (/dashboard): webhook, deliveries, sessions, users.
// Everything goes through the partner's own /v1 API with the login cookie (PG.api adds the
// CSRF header), but erasing a user: DELETE /dashboard/users?external_id=ID, same cookie.
// Texts come from the page's catalog through PG.t; nothing is inserted as HTML.
"use strict";
(function () {
  const { t, api, h, attempt, confirmDialog, time, tabs, root } = PG;
  const lang = root.dataset.lang || document.documentElement.lang || "en";
  const DELIVERY_REFRESH_MS = 3000;

  // ---- small helpers -------------------------------------------------------------------

  // A polite live region for the outcome of an action inside one panel.
  function statusLine(id) {
    const p = h("p", { id, role: "status", "aria-live": "polite", class: "notice" });
    p.hidden = true;
    return p;
  }
  function say(el, text, kind) {
    el.textContent = text || "";
    el.className = kind === "warn" ? "notice warn" : kind === "bad" ? "error" : "notice";
    el.hidden = !text;
  }

  // A translated word for a machine value, falling back to the value itself.
  function word(prefix, value) {
    if (value === null || value === undefined || value === "") return "";
    const key = prefix + value;
    const s = t(key);
    return s === key ? String(value) : s;
  }

  function badge(text, kind) {
    return h("span", { class: "badge" + (kind ? " " + kind : "") }, text);
  }

  const STATE_KIND = { pending: "warn", completed: "ok", failed: "bad", expired: "" };
  const DELIVERY_KIND = { pending: "warn", delivered: "ok", failed: "bad", held: "warn" };

  // <time> element with the raw RFC 3339 value kept for machines and tooltips.
  function when(iso) {
    if (!iso) return "";
    return h("time", { datetime: iso, title: iso }, time(iso));
  }

  // A table whose cells carry their column name (phones show rows as stacked cards).
  function table(id, columns, rows, emptyText) {
    const thead = h("thead", null, h("tr", null, columns.map((c) => h("th", { scope: "col" }, c))));
    const tbody = h("tbody", null);
    for (const r of rows) tbody.append(r);
    if (!rows.length) {
      tbody.append(h("tr", { class: "empty" },
        h("td", { colspan: columns.length }, emptyText || t("none"))));
    }
    return h("div", { class: "table-wrap" },
      h("table", { id, class: "stack" }, thead, tbody));
  }
  function cell(label, ...content) {
    return h("td", { "data-label": label }, h("div", { class: "v" }, ...content));
  }

  // The start of a long id (uuid or msg_…), enough to tell rows apart.
  function shortId(id) {
    if (!id) return "";
    const n = id.startsWith("msg_") ? 12 : 8;
    return id.length > n + 2 ? id.slice(0, n) + "…" : id;
  }

  // Copies text; without the clipboard API (plain http), selects it for Ctrl+C instead.
  async function copy(text, node, feedback) {
    try {
      await navigator.clipboard.writeText(text);
      if (feedback) say(feedback, t("partner.copied"));
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(node);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    }
  }

  // Runs an action with its button disabled, so a double click sends one request.
  async function busy(button, fn) {
    if (button) button.disabled = true;
    try {
      return await attempt(fn);
    } finally {
      if (button) PG.enable(button);
    }
  }

  // A GET of a list endpoint: its rows and X-Total-Count (PG.api gives the body only).
  async function getPage(path) {
    const r = await fetch(path, { headers: { "X-CSRF-Token": root.dataset.csrf, Accept: "application/json" },
      credentials: "same-origin" });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!r.ok) {
      if (r.status === 401) PG.showError(t("error.session"));
      throw PG.refusal(r, data, "GET", path);
    }
    const rows = Array.isArray(data) ? data : [];
    const total = Number(r.headers.get("X-Total-Count"));
    return { rows, total: Number.isFinite(total) ? total : rows.length };
  }

  // Previous/Next for a list of `size` rows a page, with "1–50 of 321" (X-Total-Count).
  // `reload` fetches `pager.get(base)` and hands the page to `pager.show`; ids are `<id>-prev`,
  // `-next`, `-count`. A move starts from the page on screen (`shownAt`, `shown` rows), one at a
  // time: a second click (or Enter) before the page arrived is ignored, and a page fetched for
  // an offset that is no longer wanted is dropped, so the count always labels the rows shown.
  function pager(id, size, reload) {
    let offset = 0; // the page wanted
    let shownAt = 0; // the page on screen
    let shown = 0;
    let moving = false;
    let back = [];
    const count = h("p", { id: id + "-count", class: "muted", "aria-live": "polite" });
    const prev = h("button", { type: "button", id: id + "-prev", disabled: true }, t("partner.page.previous"));
    const next = h("button", { type: "button", id: id + "-next", disabled: true }, t("partner.page.next"));
    const el = h("div", { class: "row pager", id: id + "-pager" }, count, prev, next);
    async function move(forward) {
      if (moving) return;
      const before = back.slice();
      if (forward) {
        back.push(shownAt);
        offset = shownAt + shown;
      } else {
        offset = back.length ? back.pop() : 0;
      }
      const target = offset;
      moving = true;
      el.setAttribute("aria-busy", "true");
      try {
        await attempt(reload);
        if (shownAt !== target && offset === target) {
          // The page did not come: stay where the screen is.
          offset = shownAt;
          back = before;
        }
      } finally {
        moving = false;
        el.removeAttribute("aria-busy");
      }
    }
    prev.addEventListener("click", () => move(false));
    next.addEventListener("click", () => move(true));
    const number = (n) => Number(n).toLocaleString(lang);
    return {
      el,
      // One page of `base` at the offset wanted now: { rows, total, at }.
      async get(base) {
        const at = offset;
        const page = await getPage(base + (base.includes("?") ? "&" : "?") + "limit=" + size + "&offset=" + at);
        return { ...page, at };
      },
      // Back to the first page (the list's filter changed).
      reset() {
        offset = 0;
        back = [];
      },
      // Shows a fetched page: true when shown, false when the page emptied under it (go back
      // and fetch again), null when another page is wanted by now (a newer fetch shows it).
      show(page) {
        const { rows, total, at } = page;
        if (at !== offset) return null;
        if (!rows.length && at > 0) {
          offset = back.length ? back.pop() : 0;
          return false;
        }
        shownAt = at;
        shown = rows.length;
        count.textContent = total ? t("partner.page.count",
          { from: number(at + 1), to: number(at + rows.length), total: number(total) }) : "";
        count.hidden = !total;
        prev.disabled = at === 0;
        next.disabled = !rows.length || at + rows.length >= total;
        return true;
      },
    };
  }

  // Keeps keyboard focus on "the same" control after a list is re-rendered.
  function keepFocus(container, render) {
    const a = document.activeElement;
    const key = a && container.contains(a) ? a.dataset.focus : null;
    render();
    if (key) {
      const again = container.querySelector('[data-focus="' + CSS.escape(key) + '"]');
      if (again) again.focus();
    }
  }

  // datetime-local value ("2026-11-26T09:30") of a Date, in local time.
  function localInput(d) {
    const p = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) +
      "T" + p(d.getHours()) + ":" + p(d.getMinutes());
  }
  // RFC 3339 (UTC, whole seconds) of a datetime-local value, or null.
  function rfc3339(local) {
    if (!local) return null;
    const d = new Date(local);
    if (isNaN(d)) return null;
    return d.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  // ---- layout --------------------------------------------------------------------------

  const list = [
    { id: "webhook", label: t("partner.tab.webhook"), onshow: () => webhook.load() },
    { id: "deliveries", label: t("partner.tab.deliveries"), onshow: () => deliveries.load() },
    { id: "sessions", label: t("partner.tab.sessions"), onshow: () => sessions.load() },
    { id: "users", label: t("partner.tab.users"), onshow: () => users.load() },
  ];
  const { bar } = tabs(list);
  bar.setAttribute("aria-label", t("partner.tabs"));

  // Roving focus and arrow keys on the tab bar; the open tab is kept in the URL hash.
  const tabButtons = () => Array.from(bar.querySelectorAll('[role="tab"]'));
  function syncTabs() {
    for (const b of tabButtons()) {
      b.tabIndex = b.getAttribute("aria-selected") === "true" ? 0 : -1;
    }
  }
  bar.addEventListener("click", (e) => {
    const b = e.target.closest('[role="tab"]');
    if (!b) return;
    syncTabs();
    const id = b.id.slice(4);
    if (location.hash !== "#" + id) history.replaceState(null, "", "#" + id);
  });
  bar.addEventListener("keydown", (e) => {
    const all = tabButtons();
    const i = all.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (e.key === "ArrowRight") j = (i + 1) % all.length;
    else if (e.key === "ArrowLeft") j = (i - 1 + all.length) % all.length;
    else if (e.key === "Home") j = 0;
    else if (e.key === "End") j = all.length - 1;
    if (j === null) return;
    e.preventDefault();
    all[j].focus();
    all[j].click();
  });

  root.replaceChildren(h("h1", null, t("partner.title")), bar, ...list.map((x) => x.panel));

  // ---- webhook -------------------------------------------------------------------------

  const webhook = (() => {
    const panel = list[0].panel;
    const secretSlot = h("div", { id: "webhook-secret-slot" });
    const msg = statusLine("webhook-message");
    const current = h("div", { id: "webhook-current" });
    const actions = h("div", { class: "row actions" });

    const url = h("input", { id: "webhook-url", type: "url", name: "url", required: true,
      inputmode: "url", autocomplete: "off", spellcheck: "false", placeholder: "https://",
      "aria-describedby": "webhook-url-hint" });
    const evSession = h("input", { id: "webhook-event-session", type: "checkbox", value: "session", checked: true });
    const evAccess = h("input", { id: "webhook-event-access", type: "checkbox", value: "access" });
    // Once the person types or ticks something, a reload of the current state leaves the form be.
    let edited = false;
    const save = h("button", { type: "submit", id: "webhook-save", class: "primary" }, t("partner.webhook.save"));
    const form = h("form", { id: "webhook-form", novalidate: true },
      h("label", { for: "webhook-url" }, t("partner.webhook.url")),
      url,
      h("p", { id: "webhook-url-hint", class: "muted" }, t("partner.webhook.url_hint")),
      h("fieldset", { class: "checks" },
        h("legend", null, t("partner.webhook.events")),
        h("label", { class: "check" }, evSession, " ", t("partner.webhook.event.session")),
        h("label", { class: "check" }, evAccess, " ", t("partner.webhook.event.access"))),
      h("div", { class: "row" }, save,
        h("span", { class: "muted" }, t("partner.webhook.save_hint"))));
    form.addEventListener("input", () => { edited = true; });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const events = [evSession, evAccess].filter((c) => c.checked).map((c) => c.value);
      if (!url.value.trim()) {
        // The error is tied to its field for assistive technology (WCAG 3.3.1).
        url.setAttribute("aria-invalid", "true");
        url.setAttribute("aria-describedby", "webhook-message webhook-url-hint");
        url.focus();
        return say(msg, t("partner.webhook.url_required"), "bad");
      }
      url.removeAttribute("aria-invalid");
      url.setAttribute("aria-describedby", "webhook-url-hint");
      if (!events.length) return say(msg, t("partner.webhook.events_required"), "bad");
      busy(save, async () => {
        say(msg, "");
        const w = await api("PUT", "/v1/webhook", { url: url.value.trim(), events });
        edited = false;
        showSecret(w.secret);
        render(w);
        say(msg, t("partner.webhook.saved"));
      });
    });

    const since = h("input", { id: "recover-since", type: "datetime-local", name: "since",
      "aria-describedby": "recover-hint" });
    since.value = localInput(new Date(Date.now() - 24 * 3600 * 1000));
    const recoverBtn = h("button", { type: "submit", id: "recover-start" }, t("partner.webhook.recover"));
    const recover = h("form", { id: "recover-form", novalidate: true },
      h("label", { for: "recover-since" }, t("partner.webhook.recover_since")),
      h("div", { class: "row" }, since, recoverBtn),
      h("p", { id: "recover-hint", class: "muted" }, t("partner.webhook.recover_hint")));
    recover.addEventListener("submit", (e) => {
      e.preventDefault();
      const at = rfc3339(since.value);
      if (!at) return say(msg, t("partner.webhook.recover_need_time"), "bad");
      busy(recoverBtn, async () => {
        const r = await api("POST", "/v1/webhook/recover", { since: at });
        say(msg, t("partner.webhook.recovered", { count: r ? r.redelivering : 0 }));
      });
    });

    panel.append(
      secretSlot,
      msg,
      h("div", { class: "grid" },
        h("div", { class: "card" }, h("h2", null, t("partner.webhook.current")), current, actions),
        h("div", { class: "card" }, h("h2", null, t("partner.webhook.set_title")), form)),
      h("div", { class: "card", id: "recover-card" },
        h("h2", null, t("partner.webhook.recover_title")), recover));

    // The secret lives only in this page's memory: a reload forgets it.
    function showSecret(secret) {
      if (!secret) return;
      const value = h("code", { id: "webhook-secret-value", class: "secret" }, secret);
      const copied = h("span", { class: "muted", role: "status" });
      const box = h("div", { id: "webhook-secret", class: "card secret-card", role: "alert" },
        h("h2", null, t("partner.webhook.secret_title")),
        h("p", null, h("strong", null, t("partner.webhook.secret_note"))),
        value,
        h("div", { class: "row" },
          h("button", { type: "button", id: "webhook-secret-copy",
            onclick: () => copy(secret, value, copied) }, t("partner.copy")),
          h("button", { type: "button", id: "webhook-secret-done",
            onclick: () => { secretSlot.replaceChildren(); } }, t("partner.webhook.secret_done")),
          copied));
      secretSlot.replaceChildren(box);
      box.scrollIntoView({ block: "nearest" });
    }

    let state = null; // the last GET /v1/webhook answer, or null when none is set

    function render(w) {
      state = w;
      if (!w) {
        current.replaceChildren(h("p", { class: "muted", id: "webhook-none" }, t("partner.webhook.none")));
        actions.replaceChildren();
        return;
      }
      if (!edited) url.value = w.url;
      if (!edited && Array.isArray(w.events)) {
        evSession.checked = w.events.includes("session");
        evAccess.checked = w.events.includes("access");
      }
      const disabled = w.status === "disabled";
      const rows = [
        [t("partner.webhook.url"), h("code", { id: "webhook-current-url" }, w.url)],
        [t("status"), h("span", { id: "webhook-status" },
          badge(word("partner.webhook.status.", w.status), disabled ? "bad" : "ok"))],
        [t("partner.webhook.events"),
          (w.events || []).map((e) => word("partner.webhook.event.", e)).join("; ")],
        [t("partner.webhook.last_failure"),
          w.last_failure
            ? h("span", null, when(w.last_failure), w.last_failure_reason
              ? [" — ", h("code", { id: "webhook-last-failure-reason" }, w.last_failure_reason)] : null)
            : t("partner.webhook.never")],
      ];
      if (w.previous_secret_valid_until) {
        rows.push([t("partner.webhook.previous_until"), when(w.previous_secret_valid_until)]);
      }
      const facts = h("dl", { class: "facts" }, rows.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
      current.replaceChildren(facts);
      if (disabled) {
        current.append(h("p", { class: "error", id: "webhook-disabled-note" }, t("partner.webhook.disabled_note")));
      }
      const testBtn = h("button", { type: "button", id: "webhook-test" }, t("partner.webhook.test"));
      testBtn.addEventListener("click", () => busy(testBtn, sendTest));
      const rotateBtn = h("button", { type: "button", id: "webhook-rotate" }, t("partner.webhook.rotate"));
      rotateBtn.addEventListener("click", async () => {
        if (!(await confirmDialog(t("partner.webhook.rotate_confirm")))) return;
        busy(rotateBtn, async () => {
          const r = await api("POST", "/v1/webhook/rotate-secret");
          showSecret(r.secret);
          await load();
        });
      });
      const out = [testBtn, rotateBtn];
      if (disabled) {
        const enableBtn = h("button", { type: "button", id: "webhook-enable", class: "primary" },
          t("partner.webhook.enable"));
        enableBtn.addEventListener("click", () => busy(enableBtn, async () => {
          render(await api("POST", "/v1/webhook/enable"));
          say(msg, t("partner.webhook.enabled"));
        }));
        out.unshift(enableBtn);
      }
      actions.replaceChildren(...out);
    }

    // Queues a ping, then follows that delivery for a while and says how it went.
    async function sendTest() {
      const { delivery_id: id } = await api("POST", "/v1/webhook/test");
      say(msg, t("partner.webhook.test_queued"));
      deliveries.first(); // the ping is the newest: the first page shows it
      for (let i = 0; i < 16; i++) {
        await new Promise((r) => setTimeout(r, i < 4 ? 500 : 1500));
        const all = await api("GET", "/v1/webhook/deliveries?q=" + encodeURIComponent(id));
        const d = (all || []).find((x) => x.id === id);
        if (!d) continue;
        if (d.status === "held") return say(msg, t("partner.webhook.test_held"), "warn");
        const last = d.attempts[d.attempts.length - 1];
        if (d.status === "delivered" && last) {
          return say(msg, t("partner.webhook.test_ok", { code: last.status_code, ms: last.latency_ms }));
        }
        if (last && !last.delivered) {
          return say(msg, t("partner.webhook.test_bad", { answer: answerText(last) }), "bad");
        }
      }
      say(msg, t("partner.webhook.test_waiting"), "warn");
    }

    async function load() {
      try {
        render(await api("GET", "/v1/webhook"));
      } catch (e) {
        if (e.status === 404) render(null);
        else PG.showError(PG.errorText(e));
      }
    }

    return { load, get state() { return state; } };
  })();

  // ---- deliveries ----------------------------------------------------------------------

  // "204" / "HTTP 500" / the transport error, for one attempt.
  function answerText(a) {
    if (!a) return t("partner.deliveries.no_answer");
    if (a.error) return a.status_code ? "HTTP " + a.status_code + " — " + a.error : a.error;
    return "HTTP " + a.status_code;
  }

  const deliveries = (() => {
    const panel = list[1].panel;
    const msg = statusLine("deliveries-message");
    const filter = h("select", { id: "deliveries-filter" },
      h("option", { value: "" }, t("partner.deliveries.all")),
      ["pending", "delivered", "failed", "held"].map((s) =>
        h("option", { value: s }, t("partner.delivery." + s))));
    filter.addEventListener("change", () => { pages.reset(); load(true); });
    const refresh = h("button", { type: "button", id: "deliveries-refresh" }, t("refresh"));
    refresh.addEventListener("click", () => busy(refresh, () => load(true)));
    const auto = h("input", { type: "checkbox", id: "deliveries-auto", checked: true });
    const updated = h("span", { class: "muted", id: "deliveries-updated" });
    const holder = h("div", { id: "deliveries-list" });
    const open = new Set(); // ids whose attempts are shown
    let last = null; // the last answer, to skip re-rendering an unchanged list
    const pages = pager("deliveries", 50, () => load(true));

    panel.append(
      msg,
      h("div", { class: "card" },
        h("h2", null, t("partner.deliveries.title")),
        h("div", { class: "row toolbar" },
          h("label", { for: "deliveries-filter", class: "inline" }, t("partner.deliveries.filter")),
          filter, refresh,
          h("label", { class: "check inline" }, auto, " ", t("partner.deliveries.auto")),
          updated),
        holder, pages.el));

    function attemptsView(d) {
      if (!d.attempts.length) {
        return h("p", { class: "muted" }, t("partner.attempt.none"),
          d.next_attempt_at ? [" ", t("partner.deliveries.next_attempt", { time: time(d.next_attempt_at) })] : null);
      }
      const rows = d.attempts.map((a) => h("tr", { "data-attempt": a.attempt },
        cell("#", t("partner.attempt.number", { n: a.attempt })),
        cell(t("time"), when(a.at)),
        cell(t("partner.attempt.code"), a.status_code
          ? badge(String(a.status_code), a.delivered ? "ok" : "bad") : "—"),
        cell(t("partner.attempt.error"), a.error || "—"),
        cell(t("partner.attempt.latency"), t("partner.attempt.ms", { ms: a.latency_ms })),
        cell(t("partner.attempt.response"), a.response
          ? h("pre", { class: "response" }, a.response)
          : h("span", { class: "muted" }, t("partner.attempt.empty")))));
      const next = d.next_attempt_at && d.status !== "delivered"
        ? h("p", { class: "muted" }, t("partner.deliveries.next_attempt", { time: time(d.next_attempt_at) }))
        : null;
      return [table("attempts-" + d.id, ["#", t("time"), t("partner.attempt.code"), t("partner.attempt.error"),
        t("partner.attempt.latency"), t("partner.attempt.response")], rows), next];
    }

    function row(d) {
      const expanded = open.has(d.id);
      const lastAttempt = d.attempts[d.attempts.length - 1];
      const toggle = h("button", { type: "button", class: "link toggle", "aria-expanded": String(expanded),
        "aria-controls": "attempts-row-" + d.id, "data-focus": "toggle:" + d.id,
        title: t("partner.deliveries.show_attempts") },
        h("span", { class: "caret", "aria-hidden": "true" }, expanded ? "▾" : "▸"),
        h("code", null, shortId(d.id)));
      toggle.addEventListener("click", () => {
        if (open.has(d.id)) open.delete(d.id); else open.add(d.id);
        keepFocus(holder, () => draw(last));
      });
      const redeliver = h("button", { type: "button", class: "small redeliver", "data-focus": "redeliver:" + d.id },
        t("partner.deliveries.redeliver"));
      redeliver.addEventListener("click", () => busy(redeliver, async () => {
        await api("POST", "/v1/webhook/deliveries/" + encodeURIComponent(d.id) + "/redeliver");
        say(msg, t("partner.deliveries.redelivered", { id: shortId(d.id) }));
        await load(true);
      }));
      const main = h("tr", { "data-delivery": d.id, "data-status": d.status, class: "delivery" },
        cell(t("partner.col.delivery"), toggle),
        cell(t("partner.col.event"), word("partner.event.", d.event), " ",
          h("code", { class: "muted" }, d.event)),
        cell(t("status"), badge(word("partner.delivery.", d.status), DELIVERY_KIND[d.status])),
        cell(t("partner.col.attempts"), h("span", { class: "attempt-count" }, String(d.attempts.length))),
        cell(t("partner.col.last_answer"), h("span", { class: "last-answer" },
          lastAttempt ? answerText(lastAttempt) : t("partner.deliveries.no_answer"))),
        cell(t("partner.col.created"), when(d.created_at)),
        cell(t("partner.actions"), redeliver));
      if (!expanded) return [main];
      const detail = h("tr", { class: "attempts", id: "attempts-row-" + d.id },
        h("td", { colspan: 7 }, attemptsView(d)));
      return [main, detail];
    }

    function draw(data) {
      const rows = (data || []).flatMap(row);
      holder.replaceChildren(table("deliveries", [t("partner.col.delivery"), t("partner.col.event"),
        t("status"), t("partner.col.attempts"), t("partner.col.last_answer"), t("partner.col.created"),
        t("partner.actions")], rows));
    }

    async function load(force) {
      const q = filter.value ? "?status=" + encodeURIComponent(filter.value) : "";
      let data;
      for (let tries = 0; tries < 3 && data === undefined; tries++) {
        let page;
        try {
          page = await pages.get("/v1/webhook/deliveries" + q);
        } catch (e) {
          if (e.status === 401) auto.checked = false; // signed out: stop polling
          else if (force) PG.showError(PG.errorText(e));
          return;
        }
        const shown = pages.show(page);
        if (shown === null) return; // a newer load shows the page wanted
        if (shown) data = page.rows;
      }
      if (data === undefined) return;
      updated.textContent = t("partner.updated", { time: new Date().toLocaleTimeString(lang) });
      const text = JSON.stringify(data);
      if (!force && last && text === JSON.stringify(last)) return;
      last = data;
      keepFocus(holder, () => draw(data));
    }

    setInterval(() => {
      if (panel.hidden || !auto.checked || document.visibilityState !== "visible") return;
      load(false);
    }, DELIVERY_REFRESH_MS);

    return { load: () => load(true), first: () => { pages.reset(); return load(true); } };
  })();

  // ---- sessions ------------------------------------------------------------------------

  const sessions = (() => {
    const panel = list[2].panel;
    const msg = statusLine("sessions-message");
    const kind = h("select", { id: "session-type", name: "type" },
      h("option", { value: "enroll" }, t("partner.type.enroll")),
      h("option", { value: "identify" }, t("partner.type.identify")));
    const extId = h("input", { id: "enroll-external-id", name: "external_id", maxlength: 100,
      autocomplete: "off", spellcheck: "false" });
    const username = h("input", { id: "enroll-username", name: "username", maxlength: 150, autocomplete: "off" });
    const language = h("select", { id: "enroll-language", name: "language" },
      ["en", "kk", "ru"].map((l) => h("option", { value: l, lang: l, selected: l === lang }, t("lang." + l))));
    const start = h("button", { type: "submit", id: "enroll-start", class: "primary" }, t("partner.sessions.start"));
    const result = h("div", { id: "enroll-result", "aria-live": "polite" });
    const enrollOnly = h("div", { class: "enroll-only form-grid" },
      h("div", null, h("label", { for: "enroll-external-id" }, t("partner.sessions.external_id")), extId),
      h("div", null, h("label", { for: "enroll-username" }, t("partner.sessions.username")), username));
    const form = h("form", { id: "enroll-form", novalidate: true },
      h("div", { class: "form-grid" },
        h("div", null, h("label", { for: "session-type" }, t("partner.sessions.type")), kind),
        h("div", null, h("label", { for: "enroll-language" }, t("partner.sessions.language")), language)),
      enrollOnly,
      h("div", { class: "row submit-row" }, start),
      result);
    kind.addEventListener("change", () => { enrollOnly.hidden = kind.value !== "enroll"; });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const isEnroll = kind.value === "enroll";
      if (isEnroll && !extId.value.trim()) {
        extId.focus();
        return say(msg, t("partner.sessions.external_id_required"), "bad");
      }
      busy(start, async () => {
        say(msg, "");
        const q = "?language=" + encodeURIComponent(language.value);
        let r;
        if (isEnroll) {
          const body = { external_id: extId.value.trim() };
          if (username.value.trim()) body.username = username.value.trim();
          r = await api("POST", "/v1/enroll" + q, body);
        } else {
          r = await api("POST", "/v1/identify" + q);
        }
        const link = h("a", { id: "enroll-url", href: r.url, target: "_blank", rel: "noopener" }, r.url);
        const copied = h("span", { class: "muted", role: "status" });
        result.replaceChildren(h("div", { class: "notice link-box" },
          h("p", null, t("partner.sessions.link", { time: time(r.expires_at) })),
          h("p", { class: "mono" }, link),
          h("div", { class: "row" },
            h("button", { type: "button", id: "enroll-copy", onclick: () => copy(r.url, link, copied) },
              t("partner.copy")), copied)));
        await load();
      });
    });

    const refresh = h("button", { type: "button", id: "sessions-refresh" }, t("refresh"));
    refresh.addEventListener("click", () => busy(refresh, load));
    const holder = h("div", { id: "sessions-list" });
    const pages = pager("sessions", 50, load);
    panel.append(msg,
      h("div", { class: "card" }, h("h2", null, t("partner.sessions.start_title")), form),
      h("div", { class: "card" },
        h("div", { class: "row head" }, h("h2", null, t("partner.sessions.list_title")), refresh),
        holder, pages.el));

    function row(s) {
      let action = "";
      if (s.state === "pending") {
        const b = h("button", { type: "button", class: "small cancel", "data-focus": "cancel:" + s.session_id },
          t("partner.sessions.cancel"));
        b.addEventListener("click", async () => {
          if (!(await confirmDialog(t("partner.sessions.cancel_confirm", { id: shortId(s.session_id) })))) return;
          busy(b, async () => {
            await api("POST", "/v1/sessions/" + encodeURIComponent(s.session_id) + "/cancel");
            say(msg, t("partner.sessions.cancelled", { id: shortId(s.session_id) }));
            await load();
            if (!holder.contains(document.activeElement)) refresh.focus();
          });
        });
        action = b;
      }
      return h("tr", { "data-session": s.session_id, "data-state": s.state },
        cell(t("partner.col.session"), h("code", { title: s.session_id }, shortId(s.session_id))),
        cell(t("partner.sessions.type"), word("partner.type.", s.type)),
        cell(t("partner.col.state"), badge(word("partner.state.", s.state), STATE_KIND[s.state])),
        cell(t("partner.sessions.external_id"), s.external_id ? h("code", null, s.external_id) : "—"),
        cell(t("partner.col.fail_reason"), s.fail_reason ? word("partner.fail.", s.fail_reason) : "—"),
        cell(t("partner.col.created"), when(s.created_at)),
        cell(t("partner.col.expires"), when(s.expires_at)),
        cell(t("partner.actions"), action));
    }

    let pending = false; // some listed session may still change state
    setInterval(() => {
      if (pending && !panel.hidden && document.visibilityState === "visible") quiet();
    }, 5000);
    async function quiet() {
      try {
        const page = await pages.get("/v1/sessions");
        if (pages.show(page) === true) draw(page.rows);
      } catch (_) { /* the next explicit load shows the error */ }
    }

    async function load() {
      for (let tries = 0; tries < 3; tries++) {
        const page = await attempt(() => pages.get("/v1/sessions"));
        if (page === undefined) return;
        const shown = pages.show(page);
        if (shown === null) return; // a newer load shows the page wanted
        if (shown) return draw(page.rows);
      }
    }

    let lastText = null;
    function draw(data) {
      const text = JSON.stringify(data);
      if (text === lastText) return;
      lastText = text;
      pending = data.some((s) => s.state === "pending");
      keepFocus(holder, () => holder.replaceChildren(table("sessions", [t("partner.col.session"),
        t("partner.sessions.type"), t("partner.col.state"), t("partner.sessions.external_id"),
        t("partner.col.fail_reason"), t("partner.col.created"), t("partner.col.expires"),
        t("partner.actions")], data.map(row))));
    }

    return { load };
  })();

  // ---- users ---------------------------------------------------------------------------

  const users = (() => {
    const panel = list[3].panel;
    const msg = statusLine("users-message");
    const refresh = h("button", { type: "button", id: "users-refresh" }, t("refresh"));
    refresh.addEventListener("click", () => busy(refresh, load));
    const holder = h("div", { id: "users-list" });
    const pages = pager("users", 100, load);
    panel.append(msg, h("div", { class: "card" },
      h("div", { class: "row head" }, h("h2", null, t("partner.users.title")), refresh),
      holder, pages.el));

    function row(u) {
      const erase = h("button", { type: "button", class: "danger small erase",
        "data-focus": "erase:" + u.external_id,
        "aria-label": t("partner.users.erase") + " " + u.external_id }, t("partner.users.erase"));
      erase.addEventListener("click", async () => {
        if (!(await confirmDialog(t("partner.users.erase_confirm", { id: u.external_id })))) return;
        busy(erase, async () => {
          // The id goes in the query, not the path: a browser rewrites a "." or ".." path
          // segment (%2e too), so /v1/users/.. would reach /v1/ (SPEC 2 allows both ids).
          await api("DELETE", "/dashboard/users?external_id=" + encodeURIComponent(u.external_id));
          say(msg, t("partner.users.erased", { id: u.external_id }));
          await load();
          if (!holder.contains(document.activeElement)) refresh.focus();
        });
      });
      // "access_level: staff, department: Demo"; nested values stay JSON.
      const meta = u.metadata && Object.keys(u.metadata).length
        ? h("code", { class: "meta", title: JSON.stringify(u.metadata) }, Object.entries(u.metadata)
          .map(([k, v]) => k + ": " + (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v)))
          .join(", "))
        : "—";
      return h("tr", { "data-external-id": u.external_id },
        cell(t("partner.sessions.external_id"), h("code", null, u.external_id)),
        cell(t("partner.col.username"), u.username || "—"),
        cell(t("partner.col.enrolled_at"), when(u.enrolled_at)),
        cell(t("partner.col.metadata"), meta),
        cell(t("partner.actions"), erase));
    }

    async function load() {
      let data;
      for (let tries = 0; tries < 3 && data === undefined; tries++) {
        const page = await attempt(() => pages.get("/v1/users"));
        if (page === undefined) return;
        const shown = pages.show(page);
        if (shown === null) return; // a newer load shows the page wanted
        if (shown) data = page.rows;
      }
      if (data === undefined) return;
      keepFocus(holder, () => holder.replaceChildren(table("users", [t("partner.sessions.external_id"),
        t("partner.col.username"), t("partner.col.enrolled_at"), t("partner.col.metadata"),
        t("partner.actions")], data.map(row))));
    }

    return { load };
  })();

  // ---- start ---------------------------------------------------------------------------

  const first = list.find((x) => "#" + x.id === location.hash) || list[0];
  const firstButton = document.getElementById("tab-" + first.id);
  if (first === list[0]) {
    syncTabs();
    first.onshow();
  } else {
    firstButton.click();
  }
})();
