// palmgate operator dashboard (/admin). Renders every tab into #app through the admin JSON API
// (/admin/v1, authenticated by the login cookie) and follows the event log live over SSE.
// Every visible word comes from the page's catalog (PG.t, keys "admin.*" from
// src/http/i18n/admin.rs); the DOM is built with PG.h only (text is never parsed as HTML).
"use strict";
(function () {
  const { h, api } = PG;
  const A = "/admin/v1";
  const FEED_MAX = 200;
  const PAGE = 1000;
  const USERS_PAGE = 100;

  const tr = (key, vars) => PG.t("admin." + key, vars);
  // A translated word for a code (reason, event type, state), or the code itself when the
  // catalog does not know it (a newer server than this script).
  function code(prefix, value) {
    const key = "admin." + prefix + "." + value;
    const s = PG.t(key);
    return s === key ? String(value) : s;
  }
  const reasonText = (r) => code("reason", r);
  // CaptureRejected reasons (core::event::CaptureRejection) and session fail reasons
  // (core::ids::FailReason) of the feed.
  const rejectText = (r) => code("reject", r);
  const failText = (r) => code("fail", r);
  const typeText = (ty) => code("type", ty);

  const S = {
    demo: false,
    people: [],
    doors: [],
    zones: [], // anti-passback zones of the policy in force, with who is inside
    readers: [],
    users: [], // the users tab's current page
    usersPage: { offset: 0, shownAt: 0, back: [], total: 0, q: "", seq: 0, moving: false },
    names: new Map(), // "partner_id\u0000external_id" (or "\u0000external_id") -> username or ""
    partners: [],
    policy: null,
    mode: null, // {lockdown, emergency} once known
    events: [], // newest first, at most FEED_MAX
    seen: new Set(),
    lastPos: 0,
    decisions: new Map(), // door id -> data of its last DoorDecided event seen
    live: false,
    // The events feed held still by the operator (WCAG 2.2.2): events are still received and
    // kept, and shown when the feed is resumed; `pausedNew` counts them meanwhile.
    paused: false,
    pausedNew: 0,
    // The gateway's link to its MQTT broker, from `broker_up` of GET /admin/v1/readers: true,
    // false, or null while unknown (not fetched yet, or no reader known: the list is empty).
    brokerUp: null,
  };

  // ---------- small helpers ----------

  function badge(kind, text, attrs) {
    return h("span", Object.assign({ class: "badge " + (kind || "") }, attrs || {}), text);
  }

  function shortTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const lang = document.documentElement.lang;
    return d.toDateString() === new Date().toDateString()
      ? d.toLocaleTimeString(lang)
      : d.toLocaleString(lang);
  }

  function levelsOf(metadata) {
    const l = metadata && metadata.access_level;
    if (Array.isArray(l)) return l.join(", ");
    return l === undefined || l === null ? "" : String(l);
  }

  function doorName(id) {
    const d = S.doors.find((x) => x.id === id);
    return d ? d.name : id;
  }

  function partnerName(id) {
    const p = S.partners.find((x) => x.id === id);
    return p ? p.name : id;
  }

  // A GET of a list endpoint: its rows and X-Total-Count (PG.api gives the body only).
  async function apiPage(path) {
    const r = await fetch(path, { headers: { "X-CSRF-Token": PG.root.dataset.csrf, Accept: "application/json" },
      credentials: "same-origin" });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!r.ok) {
      if (r.status === 401) PG.showError(PG.t("error.session"));
      throw PG.refusal(r, data, "GET", path);
    }
    const rows = Array.isArray(data) ? data : [];
    const total = Number(r.headers.get("X-Total-Count"));
    return { rows, total: Number.isFinite(total) ? total : rows.length };
  }

  // The username of a door decision's subject when the event does not carry it: from the
  // users page on screen, else asked of the server once (by external id) and remembered.
  const nameKey = (partnerId, externalId) => (partnerId || "") + "\u0000" + externalId;
  const asking = new Set();
  function rememberNames(rows) {
    for (const u of rows) {
      S.names.set(nameKey(u.partner_id, u.external_id), u.username || "");
      if (!S.names.has(nameKey("", u.external_id))) S.names.set(nameKey("", u.external_id), u.username || "");
    }
  }
  function userName(partnerId, externalId) {
    const u = S.users.find((x) => x.external_id === externalId && (!partnerId || x.partner_id === partnerId));
    if (u) return u.username || null;
    const key = nameKey(partnerId, externalId);
    if (S.names.has(key)) return S.names.get(key) || null;
    if (!asking.has(key)) {
      asking.add(key);
      apiPage(A + "/users?limit=500&q=" + encodeURIComponent(externalId)).then(({ rows }) => {
        const found = rows.find((x) => x.external_id === externalId && (!partnerId || x.partner_id === partnerId));
        if (found) rememberNames([found]);
        S.names.set(key, found && found.username ? found.username : "");
        if (found && found.username) {
          redrawEvents();
          renderDoors();
        }
      }).catch(() => {}).finally(() => asking.delete(key));
    }
    return null;
  }

  // "Name (EXT-1)" for a door decision's subject, or "unknown palm". The name and the id come
  // from partners: each is direction-isolated (PG.iso), so neither reorders the other.
  function who(subject) {
    if (!subject || !subject.external_id) return tr("unknown_palm");
    const name = subject.username || userName(subject.partner_id, subject.external_id);
    return name ? PG.iso(name) + " (" + PG.iso(subject.external_id) + ")" : PG.iso(subject.external_id);
  }

  // A table that turns into labelled rows on a phone (td::before shows data-label).
  function table(id, columns, rows, empty) {
    if (!rows.length) return h("p", { class: "muted", id: id + "-empty" }, empty || PG.t("none"));
    return h("div", { class: "table-wrap" },
      h("table", { id, class: "stack" },
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)))),
        h("tbody", {}, rows.map((r) => h("tr", r.attrs || {},
          columns.map((c) => h("td", { "data-label": c.label }, c.cell(r.row))))))));
  }

  function replace(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return el;
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  const DOOR_STATE_KIND = { locked: "", unlocked: "ok", alarm: "bad", device_down: "warn" };
  function doorBadge(state, id) {
    return badge("door-state " + (DOOR_STATE_KIND[state] || ""), code("door", state),
      { "data-state": state, id: id || null });
  }

  // ---------- data ----------

  async function loadDoors() {
    const [doors, zones] = await Promise.all([api("GET", A + "/doors"), api("GET", A + "/zones")]);
    S.doors = Array.isArray(doors) ? doors : [];
    S.zones = Array.isArray(zones) ? zones : [];
    renderDoors();
    renderZones();
    renderScanDoors();
  }

  async function loadReaders() {
    const readers = await api("GET", A + "/readers");
    S.readers = Array.isArray(readers) ? readers : [];
    const link = S.readers.find((r) => typeof r.broker_up === "boolean");
    setBroker(link ? link.broker_up : null);
    renderReaders();
  }

  // One page of the users tab: the search (q) and paging are the server's.
  async function loadUsers() {
    const P = S.usersPage;
    const filter = document.getElementById("user-filter");
    const q = filter ? filter.value.trim().slice(0, 200) : "";
    if (q !== P.q) {
      P.q = q;
      P.offset = 0;
      P.back = [];
    }
    const seq = ++P.seq;
    const at = P.offset;
    const params = new URLSearchParams({ limit: String(USERS_PAGE), offset: String(at) });
    if (q) params.set("q", q);
    const { rows, total } = await apiPage(A + "/users?" + params.toString());
    if (seq !== P.seq) return; // a newer search or page is on its way
    if (!rows.length && at > 0 && total > 0) {
      // The list shrank under this page: back to the first.
      P.offset = 0;
      P.back = [];
      return loadUsers();
    }
    S.users = rows;
    P.shownAt = at;
    P.total = total;
    rememberNames(rows);
    renderUsers();
    renderDoors();
  }

  // Previous/Next from the page on screen (P.shownAt), one move at a time: a second click (or
  // Enter) before the page arrived is ignored, not a second step from a page never shown.
  async function usersPageTo(forward) {
    const P = S.usersPage;
    if (P.moving) return;
    const back = P.back.slice();
    if (forward) {
      P.back.push(P.shownAt);
      P.offset = P.shownAt + S.users.length;
    } else {
      P.offset = P.back.length ? P.back.pop() : 0;
    }
    const target = P.offset;
    P.moving = true;
    const pager = document.getElementById("users-pager");
    if (pager) pager.setAttribute("aria-busy", "true");
    try {
      const ok = await PG.attempt(async () => { await loadUsers(); return true; });
      if (!ok && P.offset === target) {
        // The page did not come: stay where the screen is.
        P.offset = P.shownAt;
        P.back = back;
      }
    } finally {
      P.moving = false;
      if (pager) pager.removeAttribute("aria-busy");
    }
  }

  async function loadPartners() {
    S.partners = await api("GET", A + "/partners");
    renderPartners();
  }

  async function loadPolicy() {
    try {
      S.policy = await api("GET", A + "/policy");
    } catch (e) {
      if (e.status !== 404) throw e;
      S.policy = null;
    }
    renderPolicy();
  }

  // The site mode: `GET /admin/v1/mode` when the server has it, else the newest
  // SiteModeChanged of the log (no such event: normal).
  async function loadMode() {
    try {
      const m = await api("GET", A + "/mode");
      if (m && typeof m.lockdown === "boolean") return setMode(m);
    } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
    }
    const inFeed = S.events.find((e) => e.type === "SiteModeChanged");
    if (inFeed) return setMode(inFeed.data);
    let before = S.events.length ? S.events[S.events.length - 1].position : S.lastPos + 1;
    for (let pages = 0; before > 1 && pages < 200; pages++) {
      const after = Math.max(0, before - 1 - PAGE);
      const r = await api("GET", `${A}/events?after=${after}&limit=${before - 1 - after}`);
      const found = r.events.filter((e) => e.type === "SiteModeChanged").pop();
      if (found) return setMode(found.data);
      before = after + 1;
    }
    setMode(before <= 1 ? { lockdown: false, emergency: false } : null);
  }

  // The last position of the log: the server's `last_position` when it sends one, else a
  // doubling probe and a bisection (positions are gapless, 1-based).
  async function lastPosition() {
    const first = await api("GET", `${A}/events?after=0&limit=${PAGE}`);
    if (typeof first.last_position === "number") return first.last_position;
    if (first.events.length < PAGE) return first.next_after || 0;
    const exists = async (p) => (await api("GET", `${A}/events?after=${p - 1}&limit=1`)).events.length > 0;
    let lo = first.next_after;
    let step = PAGE;
    let hi;
    for (;;) {
      if (await exists(lo + step)) {
        lo += step;
        step *= 2;
      } else {
        hi = lo + step;
        break;
      }
    }
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await exists(mid)) lo = mid; else hi = mid;
    }
    return lo;
  }

  async function backfill() {
    const last = await lastPosition();
    const after = Math.max(0, last - FEED_MAX);
    const r = await api("GET", `${A}/events?after=${after}&limit=${FEED_MAX}`);
    for (const e of r.events) addEvent(e, false);
    S.lastPos = Math.max(S.lastPos, r.next_after || 0);
    renderEvents();
    renderDoors();
  }

  // Events recorded while the stream was down.
  async function catchUp() {
    for (let i = 0; i < 20; i++) {
      const r = await api("GET", `${A}/events?after=${S.lastPos}&limit=${PAGE}`);
      for (const e of r.events) addEvent(e, true);
      if (r.events.length < PAGE) break;
    }
    renderEvents();
  }

  function addEvent(e, live) {
    if (!e || typeof e.position !== "number" || S.seen.has(e.position)) return;
    S.seen.add(e.position);
    S.lastPos = Math.max(S.lastPos, e.position);
    let i = 0;
    while (i < S.events.length && S.events[i].position > e.position) i++;
    S.events.splice(i, 0, e);
    if (S.paused) S.pausedNew++;
    while (S.events.length > FEED_MAX) S.seen.delete(S.events.pop().position);
    if (e.type === "DoorDecided" && e.data && e.data.door) {
      const prev = S.decisions.get(e.data.door);
      if (!prev || prev.position < e.position) S.decisions.set(e.data.door, { position: e.position, data: e.data });
    }
    if (live) react(e);
  }

  const refreshDoors = debounce(() => PG.attempt(loadDoors), 150);
  const refreshReaders = debounce(() => PG.attempt(loadReaders), 300);
  const refreshUsers = debounce(() => PG.attempt(loadUsers), 500);
  const refreshPartners = debounce(() => PG.attempt(loadPartners), 300);
  const refreshPolicy = debounce(() => PG.attempt(loadPolicy), 300);
  const redrawEvents = debounce(renderEvents, 50);

  const DOOR_EVENTS = new Set(["DoorDecided", "DoorRestingChanged", "RelaySwitched", "RelayFailed",
    "DeviceStatusChanged", "DoorContactChanged", "DoorExitRequested", "DoorForcedOpen", "DoorHeldOpen",
    "SiteModeChanged", "PolicyActivated"]);

  function react(e) {
    if (DOOR_EVENTS.has(e.type)) refreshDoors();
    if (e.type === "ReaderStatusChanged") refreshReaders();
    if (e.type === "UserEnrolled" || e.type === "UserErased") {
      S.names.clear();
      refreshUsers();
    }
    if (e.type.startsWith("Partner")) refreshPartners();
    if (e.type === "PolicyActivated") refreshPolicy();
    if (e.type === "SiteModeChanged" && e.data) setMode(e.data);
  }

  // Every (re)connection reads the log after the newest event shown: on the first, what was
  // recorded between the backfill and the subscription; after a drop (the server ends a stream
  // that fell behind), what the stream missed. addEvent skips events already shown.
  function follow() {
    const es = PG.stream(A + "/events/stream", (e) => {
      addEvent(e, true);
      redrawEvents();
    });
    es.onopen = () => {
      setLive(true);
      PG.attempt(catchUp);
    };
    es.onerror = () => {
      setLive(false);
    };
  }

  // ---------- layout ----------

  const panels = {};

  function boot(demo) {
    S.demo = demo;
    const list = [];
    if (demo) list.push({ id: "reader", label: tr("tab.reader"), build: buildReader });
    list.push(
      { id: "doors", label: tr("tab.doors"), build: buildDoors, onshow: () => PG.attempt(loadDoors) },
      { id: "readers", label: tr("tab.readers"), build: buildReaders, onshow: () => PG.attempt(loadReaders) },
      { id: "events", label: tr("tab.events"), build: buildEvents },
      { id: "users", label: tr("tab.users"), build: buildUsers, onshow: () => PG.attempt(loadUsers) },
      { id: "partners", label: tr("tab.partners"), build: buildPartners, onshow: () => PG.attempt(loadPartners) },
      { id: "site", label: tr("tab.site"), build: buildSite, onshow: () => PG.attempt(loadPolicy) },
      { id: "audit", label: tr("tab.audit"), build: buildAudit },
    );
    for (const tab of list) {
      const onshow = tab.onshow;
      tab.onshow = () => {
        remember(tab.id);
        if (onshow) onshow();
      };
    }
    const { bar, panels: ps } = PG.tabs(list);
    bar.setAttribute("aria-label", tr("sections"));
    bar.addEventListener("keydown", tabKeys);
    const banner = h("div", { id: "mode-banner", role: "status", hidden: true });
    const broker = h("div", { id: "broker-banner", class: "broker-banner", role: "alert", hidden: true });
    replace(PG.root, h("h1", { class: "visually-hidden" }, tr("title")), broker, banner, bar, ps);
    list.forEach((tab, i) => {
      panels[tab.id] = ps[i];
      tab.build(ps[i]);
    });
    renderMode();
    renderBroker();
    const wanted = location.hash.slice(1);
    const start = list.find((x) => x.id === wanted) || list[0];
    select(start.id);
  }

  function select(id) {
    const b = document.getElementById("tab-" + id);
    if (b) b.click();
  }

  // Arrow keys, Home and End move between tabs (each tab is also in the Tab order).
  function tabKeys(ev) {
    const tabs = [...ev.currentTarget.querySelectorAll("[role=tab]")];
    const i = tabs.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (ev.key === "ArrowRight") j = (i + 1) % tabs.length;
    else if (ev.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
    else if (ev.key === "Home") j = 0;
    else if (ev.key === "End") j = tabs.length - 1;
    if (j === null) return;
    ev.preventDefault();
    tabs[j].focus();
    tabs[j].click();
  }

  // The open tab survives a reload and a language switch (the shell's ?lang= links).
  function remember(id) {
    if (location.hash.slice(1) !== id) history.replaceState(null, "", "#" + id);
    for (const a of document.querySelectorAll(".langs a")) {
      const u = new URL(a.getAttribute("href"), location.href);
      u.hash = id;
      a.setAttribute("href", u.pathname + u.search + u.hash);
    }
    const b = document.getElementById("tab-" + id);
    if (b && b.scrollIntoView) b.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  function setLive(on) {
    S.live = on;
    const el = document.getElementById("events-live");
    if (el) replace(el, on ? badge("ok", tr("events.live")) : badge("warn", tr("events.reconnecting")));
  }

  // ---------- the MQTT broker link ----------

  // Above every tab while the gateway has lost its broker: readers can neither be heard nor
  // armed, so a palm scan opens no door; the relays (Modbus) do not need the broker.
  function setBroker(up) {
    if (S.brokerUp === up) return;
    S.brokerUp = up;
    renderBroker();
  }

  function renderBroker() {
    const el = document.getElementById("broker-banner");
    if (!el) return;
    const down = S.brokerUp === false;
    el.dataset.brokerUp = S.brokerUp === null ? "" : String(S.brokerUp);
    el.hidden = !down;
    replace(el, down ? [
      h("p", {}, h("strong", {}, tr("broker.down"))),
      h("p", {}, tr("broker.readers")),
      h("p", {}, tr("broker.relays")),
    ] : []);
  }

  // ---------- site mode ----------

  function setMode(m) {
    S.mode = m ? { lockdown: !!m.lockdown, emergency: !!m.emergency } : null;
    renderMode();
  }

  function modeText(m) {
    if (!m) return tr("mode.unknown");
    if (m.lockdown && m.emergency) return tr("mode.both");
    if (m.lockdown) return tr("mode.lockdown");
    if (m.emergency) return tr("mode.emergency");
    return tr("mode.normal");
  }

  function renderMode() {
    const m = S.mode;
    const banner = document.getElementById("mode-banner");
    if (banner) {
      const on = m && (m.lockdown || m.emergency);
      banner.hidden = !on;
      banner.className = on ? "mode-banner " + (m.lockdown ? "lockdown" : "emergency") : "mode-banner";
      replace(banner, on ? [
        m.lockdown ? h("p", {}, h("strong", {}, tr("mode.lockdown")), " — ", tr("mode.lockdown_hint")) : null,
        m.emergency ? h("p", {}, h("strong", {}, tr("mode.emergency")), " — ", tr("mode.emergency_hint")) : null,
      ] : []);
    }
    const cur = document.getElementById("site-mode");
    if (cur) {
      const kind = !m ? "" : m.lockdown ? "bad" : m.emergency ? "warn" : "ok";
      replace(cur, tr("mode.current"), " ", badge(kind, modeText(m), { id: "site-mode-badge" }));
    }
    const lock = document.getElementById("lockdown-toggle");
    if (lock) {
      const on = !!(m && m.lockdown);
      lock.textContent = on ? tr("mode.lockdown_off") : tr("mode.lockdown_on");
      lock.setAttribute("aria-pressed", on ? "true" : "false");
      lock.className = on ? "primary" : "danger";
    }
    const em = document.getElementById("emergency-toggle");
    if (em) {
      const on = !!(m && m.emergency);
      em.textContent = on ? tr("mode.emergency_off") : tr("mode.emergency_on");
      em.setAttribute("aria-pressed", on ? "true" : "false");
      em.className = on ? "primary" : "danger";
    }
  }

  async function toggleMode(which) {
    const on = !(S.mode && S.mode[which === "lockdown" ? "lockdown" : "emergency"]);
    const question = tr(which === "lockdown"
      ? (on ? "mode.confirm_lockdown_on" : "mode.confirm_lockdown_off")
      : (on ? "mode.confirm_emergency_on" : "mode.confirm_emergency_off"));
    if (!(await PG.confirmDialog(question))) return;
    await PG.attempt(async () => {
      const path = which === "lockdown" ? "/lockdown" : "/emergency-unlock";
      setMode(await api("POST", A + path, { on }));
      refreshDoors();
    });
  }

  // ---------- virtual reader (demo mode) ----------

  let scanPoll = null;

  function buildReader(p) {
    const person = h("select", { id: "scan-person", name: "person", onchange: renderPersonInfo });
    for (const x of S.people) {
      const label = x.enrolled ? (x.username || x.name) : tr("scan.stranger");
      const level = x.enrolled && x.access_level ? " — " + x.access_level : "";
      person.append(h("option", { value: x.name }, label + level));
    }
    const door = h("select", { id: "scan-door", name: "door" });
    const button = h("button", { type: "submit", id: "scan-button", class: "primary big" }, tr("scan.button"));
    const form = h("form", { id: "scan-form", class: "card", onsubmit: (ev) => { ev.preventDefault(); scan(); } },
      h("h2", {}, tr("scan.title")),
      h("p", { class: "muted" }, tr("scan.intro")),
      h("label", { for: "scan-person" }, tr("scan.person")), person,
      h("p", { id: "scan-person-info", class: "muted" }),
      h("label", { for: "scan-door" }, tr("scan.door")), door,
      h("div", { class: "row actions" }, button));
    const result = h("div", { id: "scan-result", class: "scan-result idle", "aria-live": "polite" },
      h("p", { class: "muted" }, tr("scan.idle")));
    const doorState = h("div", { id: "scan-door-state", class: "scan-door-state", hidden: true });
    p.append(h("div", { class: "reader-layout" }, form,
      h("div", { class: "card result-card" }, h("h2", {}, tr("scan.result")), result, doorState)));
    renderScanDoors();
    renderPersonInfo();
  }

  function renderPersonInfo() {
    const el = document.getElementById("scan-person-info");
    const sel = document.getElementById("scan-person");
    if (!el || !sel) return;
    const x = S.people.find((q) => q.name === sel.value);
    if (!x) return replace(el);
    if (!x.enrolled) return replace(el, tr("scan.stranger_info"));
    replace(el, tr("scan.person_info", { level: x.access_level || "—", id: x.external_id || "—" }));
  }

  function renderScanDoors() {
    const sel = document.getElementById("scan-door");
    if (!sel) return;
    const doors = S.doors.filter((d) => d.readers && d.readers.length);
    const keys = doors.map((d) => d.id).join(",");
    if (sel.dataset.keys === keys) return; // keep the choice while the list is the same
    const before = sel.value;
    replace(sel, doors.map((d) => h("option", { value: d.id },
      tr("scan.door_option", { door: d.name, reader: d.readers[0] }))));
    sel.dataset.keys = keys;
    if (doors.some((d) => d.id === before)) sel.value = before;
  }

  async function scan() {
    const person = document.getElementById("scan-person").value;
    const doorId = document.getElementById("scan-door").value;
    const door = S.doors.find((d) => d.id === doorId);
    const button = document.getElementById("scan-button");
    const result = document.getElementById("scan-result");
    if (!door) return;
    button.disabled = true;
    button.textContent = tr("scan.scanning");
    result.setAttribute("aria-busy", "true");
    result.className = "scan-result pending";
    replace(result, h("p", { class: "muted" }, tr("scan.scanning")));
    try {
      const r = await api("POST", A + "/demo/scan", { reader: door.readers[0], person });
      showScan(r, person);
      followDoor(r.door || doorId, r.granted);
    } catch (e) {
      result.className = "scan-result failed";
      result.dataset.granted = "";
      replace(result, h("p", { class: "error", role: "alert" }, PG.errorText(e)));
    } finally {
      button.textContent = tr("scan.button");
      result.removeAttribute("aria-busy");
      PG.enable(button);
    }
  }

  function showScan(r, personName) {
    const result = document.getElementById("scan-result");
    const x = S.people.find((q) => q.name === personName);
    const name = x ? (x.enrolled ? x.username || x.name : tr("scan.stranger")) : personName;
    result.className = "scan-result " + (r.granted ? "granted" : "denied");
    result.dataset.granted = r.granted ? "true" : "false";
    result.dataset.reason = r.reason || "";
    const detail = [doorName(r.door), name];
    if (r.external_id) detail.push(r.external_id);
    if (r.level) detail.push(tr("scan.level", { level: r.level }));
    replace(result,
      h("p", { class: "scan-headline", id: "scan-headline" },
        h("span", { class: "scan-mark", "aria-hidden": "true" }, r.granted ? "✓" : "✕"),
        r.granted ? tr("scan.granted") : tr("scan.denied")),
      r.granted ? null : h("p", { class: "scan-reason", id: "scan-reason", "data-reason": r.reason || "" },
        r.reason ? reasonText(r.reason) : ""),
      h("p", { class: "scan-detail" }, detail.join(" · ")),
      h("p", { class: "muted" }, new Date().toLocaleTimeString(document.documentElement.lang)));
  }

  // Polls the door a few seconds after a scan, so the operator sees it unlock and lock again.
  function followDoor(doorId, granted) {
    if (scanPoll) clearTimeout(scanPoll.timer);
    const box = document.getElementById("scan-door-state");
    const poll = { doorId, granted, trail: [], started: Date.now(), timer: null, sawUnlock: false, settled: null };
    scanPoll = poll;
    box.hidden = false;
    const limit = granted ? 9000 : 2500;
    const tick = async () => {
      if (scanPoll !== poll) return;
      try {
        const doors = await api("GET", A + "/doors");
        S.doors = doors;
        renderDoors();
      } catch (_) { /* the next tick tries again */ }
      if (scanPoll !== poll) return;
      const d = S.doors.find((x) => x.id === doorId);
      const state = d ? d.state : "unknown";
      if (poll.trail[poll.trail.length - 1] !== state) poll.trail.push(state);
      if (state === "unlocked") poll.sawUnlock = true;
      const elapsed = Date.now() - poll.started;
      // Done: the door unlocked and is back at rest for a second, or the time is up.
      if (poll.sawUnlock && state !== "unlocked") poll.settled = poll.settled || Date.now();
      const done = elapsed > limit || (poll.settled && Date.now() - poll.settled > 1000);
      renderDoorFollow(d, poll, done);
      if (!done) poll.timer = setTimeout(tick, 250);
    };
    tick();
  }

  function renderDoorFollow(d, poll, done) {
    const box = document.getElementById("scan-door-state");
    if (!box) return;
    replace(box,
      h("p", { class: "scan-door-now" },
        tr("scan.door_now", { door: d ? d.name : poll.doorId }), " ",
        d ? doorBadge(d.state, "scan-door-badge") : null),
      h("p", { class: "muted", id: "scan-door-trail", "data-trail": poll.trail.join(",") },
        poll.trail.map((s) => code("door", s)).join(" → ")),
      done ? null : h("p", { class: "muted" },
        poll.granted && !poll.sawUnlock ? tr("scan.waiting_relay") : tr("scan.watching")));
  }

  // ---------- doors ----------

  function buildDoors(p) {
    p.append(h("div", { class: "panel-head" },
      h("h2", {}, tr("doors.title")),
      h("button", { type: "button", id: "doors-refresh", onclick: () => PG.attempt(loadDoors) }, PG.t("refresh"))),
    h("div", { id: "doors-list", class: "grid doors" }),
    buildZones());
    renderDoors();
    renderZones();
  }

  // ---------- anti-passback zones: who is inside, and forgiving ----------

  function buildZones() {
    const zone = h("select", { id: "forgive-zone", name: "zone" });
    const partner = h("select", { id: "forgive-partner", name: "partner_id" });
    const ext = h("input", { id: "forgive-external-id", name: "external_id", required: true, maxlength: 100,
      autocomplete: "off", spellcheck: "false" });
    const reason = h("input", { id: "forgive-reason", name: "reason", maxlength: 500, autocomplete: "off" });
    const form = h("form", { id: "forgive-form", onsubmit: (ev) => { ev.preventDefault(); forgiveOne(); } },
      h("h3", {}, tr("zones.forgive_one")),
      h("div", { class: "form-grid" },
        h("div", {}, h("label", { for: "forgive-zone" }, tr("zones.zone")), zone),
        h("div", {}, h("label", { for: "forgive-partner" }, tr("zones.partner")), partner),
        h("div", {}, h("label", { for: "forgive-external-id" }, tr("zones.external_id")), ext)),
      h("label", { for: "forgive-reason" }, tr("zones.reason")), reason,
      h("div", { class: "row actions" }, h("button", { type: "submit", id: "forgive-submit" }, tr("zones.forgive"))));
    return h("section", { class: "card", id: "zones-card", "aria-labelledby": "zones-title", hidden: true },
      h("h2", { id: "zones-title" }, tr("zones.title")),
      h("p", { class: "muted" }, tr("zones.help")),
      h("p", { id: "zones-message", role: "status", class: "notice", hidden: true }),
      h("div", { id: "zones-list" }),
      form);
  }

  let zonesShown = null; // what renderZones last drew: the doors' poll redraws nothing unchanged
  function renderZones() {
    const card = document.getElementById("zones-card");
    if (!card) return;
    const key = JSON.stringify([S.zones, (S.partners || []).map((p) => [p.id, p.name])]);
    if (key === zonesShown) return;
    zonesShown = key;
    card.hidden = !S.zones.length;
    replace(document.getElementById("zones-list"), table("zones-table", [
      { label: tr("zones.zone"), cell: (z) => h("span", { class: "mono" }, z.name) },
      { label: tr("zones.anti_passback"), cell: (z) => code("apb", z.anti_passback) },
      { label: tr("zones.inside"), cell: (z) => h("span", { class: "zone-inside" }, String(z.inside)) },
      { label: tr("zones.outside"), cell: (z) => h("span", { class: "zone-outside" }, String(z.outside)) },
      { label: tr("partners.actions"), cell: (z) => h("button", { type: "button", id: "forgive-all-" + z.name,
        class: "forgive-all", disabled: !(z.inside + z.outside), onclick: () => forgiveAll(z),
        "aria-label": tr("zones.forgive_all_named", { zone: z.name }) }, tr("zones.forgive_all")) },
    ], S.zones.map((z) => ({ row: z, attrs: { "data-zone": z.name } }))));
    const zone = document.getElementById("forgive-zone");
    const before = zone.value;
    replace(zone, S.zones.map((z) => h("option", { value: z.name }, z.name)));
    if (S.zones.some((z) => z.name === before)) zone.value = before;
    const partner = document.getElementById("forgive-partner");
    const chosen = partner.value;
    replace(partner, (S.partners || []).map((p) => h("option", { value: p.id }, p.name)));
    if ((S.partners || []).some((p) => p.id === chosen)) partner.value = chosen;
  }

  function zonesSay(text) {
    const m = document.getElementById("zones-message");
    m.textContent = text;
    m.hidden = !text;
  }

  async function forgive(zone, body) {
    const r = await api("POST", `${A}/zones/${encodeURIComponent(zone)}/forgive`, body);
    zonesSay(tr("zones.forgiven", { zone, n: r.forgiven }));
    const zones = await api("GET", A + "/zones");
    S.zones = Array.isArray(zones) ? zones : [];
    renderZones();
  }

  async function forgiveAll(z) {
    if (!(await PG.confirmDialog(tr("zones.confirm_all", { zone: z.name, n: z.inside + z.outside })))) return;
    const reason = document.getElementById("forgive-reason").value.trim();
    await PG.attempt(() => forgive(z.name, reason ? { reason } : {}));
    // The button is drawn again (disabled now that nobody is left): focus stays in the card.
    const b = document.getElementById("forgive-all-" + z.name);
    (b && !b.disabled ? b : document.getElementById("forgive-zone")).focus();
  }

  async function forgiveOne() {
    const zone = document.getElementById("forgive-zone").value;
    const ext = document.getElementById("forgive-external-id");
    const partner = document.getElementById("forgive-partner").value;
    const reason = document.getElementById("forgive-reason").value.trim();
    if (!ext.value.trim()) {
      ext.focus();
      return zonesSay(tr("zones.external_id_required"));
    }
    const button = document.getElementById("forgive-submit");
    button.disabled = true;
    try {
      await PG.attempt(async () => {
        // Sent as typed: an external id is compared exactly (blank is refused above).
        const body = { partner_id: partner, external_id: ext.value };
        if (reason) body.reason = reason;
        await forgive(zone, body);
        ext.value = "";
      });
    } finally {
      PG.enable(button);
    }
  }

  // The door endpoint gives granted, reason and time; the log (or a newer server's
  // last_decision) adds who it was.
  function lastDecision(d) {
    const ld = d.last_decision;
    const ev = S.decisions.get(d.id);
    const same = !!ev && (!ld || Math.abs(new Date(ev.data.at) - new Date(ld.at)) < 1000);
    if (!ld && !ev) return h("p", { class: "muted" }, tr("doors.no_decision"));
    const v = same ? ev.data.verdict || {} : {};
    const granted = ld ? !!ld.granted : v.verdict === "granted";
    const reason = ld ? ld.reason : v.reason;
    const at = ld ? ld.at : ev.data.at;
    let whoText = null;
    if (ld && ld.external_id) whoText = who({ external_id: ld.external_id, username: ld.username, partner_id: ld.partner_id });
    else if (ld && "external_id" in ld) whoText = who(null);
    else if (same) whoText = who(ev.data.subject);
    const level = (ld && ld.level) || v.level || null;
    return h("div", { class: "last-decision " + (granted ? "granted" : "denied"), "data-granted": granted ? "true" : "false" },
      h("p", { class: "ld-head" },
        badge(granted ? "ok" : "bad", granted ? tr("doors.granted") : tr("doors.denied")), " ",
        h("time", { datetime: at }, shortTime(at))),
      whoText ? h("p", { class: "ld-who" }, whoText) : null,
      granted
        ? (level ? h("p", { class: "muted" }, tr("scan.level", { level })) : null)
        : h("p", { class: "reason", "data-reason": reason || "" }, reasonText(reason)));
  }

  function renderDoors() {
    const list = document.getElementById("doors-list");
    if (!list) return;
    if (!S.doors.length) return replace(list, h("p", { class: "muted", id: "doors-empty" }, tr("doors.none")));
    replace(list, S.doors.map((d) => {
      const facts = [
        [tr("doors.relay"), d.relay_on ? tr("doors.relay_on") : tr("doors.relay_off")],
        [tr("doors.device"), d.device + " · " + (d.device_up === false ? tr("doors.device_down")
          : d.device_up ? tr("doors.device_up") : tr("doors.device_unknown"))],
      ];
      if (d.open !== null && d.open !== undefined) facts.push([tr("doors.contact"), d.open ? tr("doors.open") : tr("doors.closed")]);
      if (d.resting_unlocked) facts.push([tr("doors.resting"), tr("doors.resting_unlocked")]);
      if (d.lease_s) facts.push([tr("doors.lease_title"), tr("doors.lease", { seconds: String(d.lease_s) })]);
      if (d.alarm) facts.push([tr("doors.alarm"), code("alarm", d.alarm)]);
      if (d.relay_fault) facts.push([tr("doors.relay_fault"), d.relay_fault]);
      return h("article", { class: "card door", id: "door-" + d.id, "data-state": d.state },
        h("div", { class: "door-head" }, h("h3", {}, d.name), doorBadge(d.state, "door-" + d.id + "-state")),
        h("p", { class: "muted mono" }, d.id, " · ", tr("doors.readers"), ": ", (d.readers || []).join(", ") || "—"),
        h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        h("h4", {}, tr("doors.last_decision")),
        lastDecision(d));
    }));
  }

  // ---------- readers ----------

  function buildReaders(p) {
    p.append(h("div", { class: "card" },
      h("div", { class: "panel-head" }, h("h2", {}, tr("readers.title")),
        h("button", { type: "button", id: "readers-refresh", onclick: () => PG.attempt(loadReaders) }, PG.t("refresh"))),
      h("div", { id: "readers-list" }, h("p", { class: "muted" }, PG.t("loading")))));
  }

  function renderReaders() {
    const el = document.getElementById("readers-list");
    if (!el) return;
    const doorOf = (rid) => {
      const d = S.doors.find((x) => (x.readers || []).includes(rid));
      return d ? d.name : "—";
    };
    replace(el, table("readers-table", [
      { label: tr("readers.reader"), cell: (r) => h("span", { class: "mono" }, r.id) },
      { label: PG.t("status"), cell: (r) => presenceBadge(presence(r)) },
      { label: tr("readers.since"), cell: (r) => h("time", { datetime: r.since }, PG.time(r.since)) },
      { label: tr("readers.door"), cell: (r) => doorOf(r.id) },
      { label: tr("readers.model"), cell: (r) => [r.model, r.firmware].filter(Boolean).join(" · ") || "—" },
    ], S.readers.map((r) => ({ row: r, attrs: { id: "reader-" + r.id, "data-online": r.online ? "true" : "false",
      "data-presence": presence(r) } })),
    tr("readers.none")));
  }

  // `online`, `offline`, or `unknown` while the gateway has no broker (the reader's last
  // report says nothing then). An older server without `presence`: its `online`.
  function presence(r) {
    if (r.presence === "online" || r.presence === "offline" || r.presence === "unknown") return r.presence;
    if (r.broker_up === false) return "unknown";
    return r.online ? "online" : "offline";
  }

  function presenceBadge(p) {
    if (p === "unknown") return badge("warn", tr("readers.unknown"), { "data-presence": p });
    return p === "online" ? badge("ok", tr("readers.online")) : badge("bad", tr("readers.offline"));
  }

  // ---------- events ----------

  function buildEvents(p) {
    p.append(h("div", { class: "card" },
      h("div", { class: "panel-head" }, h("h2", {}, tr("events.title")),
        h("div", { class: "row" },
          h("span", { id: "events-live", "aria-live": "polite" }, badge("", tr("events.connecting"))),
          h("button", { type: "button", id: "events-pause", onclick: togglePause }, tr("events.pause")))),
      h("p", { class: "muted" }, tr("events.intro", { max: FEED_MAX })),
      h("ol", { id: "event-feed", class: "feed events" })));
    if (S.live) setLive(true);
    renderEvents();
  }

  function summary(e) {
    const d = e.data || {};
    const door = d.door ? doorName(d.door) : "";
    switch (e.type) {
      case "DoorDecided": {
        const v = d.verdict || {};
        return v.verdict === "granted"
          ? tr("sum.granted", { door, who: who(d.subject), level: v.level || "—" })
          : tr("sum.denied", { door, who: who(d.subject), reason: reasonText(v.reason) });
      }
      case "RelaySwitched": return tr(d.on ? "sum.relay_on" : "sum.relay_off", { door });
      case "RelayFailed": return tr("sum.relay_failed", { door, error: d.error || "" });
      case "DoorRestingChanged":
        return tr(d.unlocked ? "sum.resting_unlocked" : "sum.resting_locked", { door, cause: code("cause", d.cause || "") });
      case "DoorContactChanged": return tr(d.open ? "sum.contact_open" : "sum.contact_closed", { door });
      case "DoorExitRequested":
      case "DoorForcedOpen":
      case "DoorHeldOpen": return door;
      case "DeviceStatusChanged":
        return tr(d.up ? "sum.device_up" : "sum.device_down", { device: d.device }) + (d.error ? " — " + d.error : "");
      case "ReaderStatusChanged": return tr(d.online ? "sum.reader_online" : "sum.reader_offline", { reader: d.reader_id });
      case "SiteModeChanged": return modeText(d);
      case "ZonePresenceForgiven":
        return tr("sum.forgiven", { zone: d.zone, n: d.cleared }) + (d.external_id ? " · " + d.external_id : "")
          + (d.reason ? " — " + d.reason : "");
      case "PolicyActivated": return tr("sum.policy", { sha: String(d.sha256 || "").slice(0, 12), source: code("source", d.source || "") });
      case "PartnerCreated": return d.name;
      case "UserEnrolled": return who({ external_id: d.external_id, username: d.username, partner_id: d.partner_id });
      case "UserErased": return d.external_id;
      case "CaptureRejected": return tr("sum.capture_rejected", { reader: d.reader_id, reason: rejectText(d.reason) });
      case "SessionFailed": return String(d.session_id || "").slice(0, 8) + " · " + (d.reason ? failText(d.reason) : "");
      case "DeliveryAttempted":
        return tr(d.delivered ? "sum.delivered" : "sum.delivery_failed",
          { status: d.status_code || d.error || "—", attempt: d.attempt });
      default:
        if (d.partner_id && !d.session_id && !d.delivery_id) return partnerName(d.partner_id);
        if (d.session_id) return String(d.session_id).slice(0, 8);
        if (d.delivery_id) return String(d.delivery_id).slice(0, 12);
        return e.stream || "";
    }
  }

  function eventKind(e) {
    if (e.type === "DoorDecided") return e.data && e.data.verdict && e.data.verdict.verdict === "granted" ? "ok" : "bad";
    if (e.type === "DoorForcedOpen" || e.type === "DoorHeldOpen" || e.type === "RelayFailed") return "bad";
    if (e.type === "SiteModeChanged") return e.data && (e.data.lockdown || e.data.emergency) ? "warn" : "ok";
    if (e.type === "DeviceStatusChanged" || e.type === "ReaderStatusChanged") {
      return e.data && (e.data.up || e.data.online) ? "ok" : "warn";
    }
    return "";
  }

  function togglePause() {
    S.paused = !S.paused;
    S.pausedNew = 0;
    renderPause();
    if (!S.paused) renderEvents();
  }

  function renderPause() {
    const b = document.getElementById("events-pause");
    if (!b) return;
    b.dataset.paused = S.paused ? "true" : "false";
    replace(b, !S.paused ? tr("events.pause")
      : S.pausedNew ? tr("events.resume_new", { n: number(S.pausedNew) }) : tr("events.resume"));
  }

  function renderEvents() {
    const feed = document.getElementById("event-feed");
    if (!feed) return;
    if (S.paused) return renderPause();
    if (!S.events.length) return replace(feed, h("li", { class: "muted" }, PG.t("none")));
    replace(feed, S.events.map((e) => h("li", { "data-type": e.type, "data-position": e.position },
      h("time", { datetime: e.recorded_at, class: "ev-time" }, shortTime(e.recorded_at)),
      badge("ev-type " + eventKind(e), typeText(e.type)),
      h("span", { class: "ev-summary" }, summary(e)))));
  }

  // ---------- users ----------

  function buildUsers(p) {
    p.append(h("div", { class: "card" },
      h("div", { class: "panel-head" }, h("h2", {}, tr("users.title")),
        h("button", { type: "button", id: "users-refresh", onclick: () => PG.attempt(loadUsers) }, PG.t("refresh"))),
      h("label", { for: "user-filter" }, tr("users.filter")),
      h("input", { id: "user-filter", type: "search", autocomplete: "off", maxlength: 200, oninput: searchUsers }),
      h("p", { id: "users-count", class: "muted", "aria-live": "polite" }),
      h("div", { id: "users-list" }, h("p", { class: "muted" }, PG.t("loading"))),
      h("div", { class: "row actions", id: "users-pager" },
        h("button", { type: "button", id: "users-prev", disabled: true, onclick: () => usersPageTo(false) }, tr("users.previous")),
        h("button", { type: "button", id: "users-next", disabled: true, onclick: () => usersPageTo(true) }, tr("users.next")))));
  }

  const searchUsers = debounce(() => PG.attempt(loadUsers), 250);

  const number = (n) => Number(n).toLocaleString(document.documentElement.lang);

  function renderUsers() {
    const el = document.getElementById("users-list");
    if (!el) return;
    const P = S.usersPage;
    const rows = S.users;
    replace(document.getElementById("users-count"), rows.length
      ? tr("users.count", { from: number(P.shownAt + 1), to: number(P.shownAt + rows.length), total: number(P.total) })
      : tr("users.count_none", { total: number(P.total) }));
    document.getElementById("users-prev").disabled = P.shownAt === 0;
    document.getElementById("users-next").disabled = !rows.length || P.shownAt + rows.length >= P.total;
    replace(el, table("users-table", [
      { label: tr("users.partner"), cell: (u) => u.partner_name || u.partner_id },
      { label: tr("users.external_id"), cell: (u) => h("span", { class: "mono" }, u.external_id) },
      { label: tr("users.name"), cell: (u) => u.username || "—" },
      { label: tr("users.level"), cell: (u) => levelsOf(u.metadata) || h("span", { class: "muted" }, tr("users.no_level")) },
      { label: tr("users.enrolled_at"), cell: (u) => h("time", { datetime: u.enrolled_at }, PG.time(u.enrolled_at)) },
    ], rows.map((u) => ({ row: u })), P.q ? tr("users.none_found", { q: P.q }) : tr("users.none")));
  }

  // ---------- partners ----------

  function buildPartners(p) {
    const name = h("input", { id: "partner-name", name: "name", required: true, maxlength: 200, autocomplete: "off" });
    const hook = h("input", { id: "partner-webhook", name: "webhook_url", type: "url", inputmode: "url",
      placeholder: "https://", autocomplete: "off" });
    const form = h("form", { id: "partner-form", class: "card", onsubmit: (ev) => { ev.preventDefault(); createPartner(); } },
      h("h2", {}, tr("partners.create_title")),
      h("label", { for: "partner-name" }, tr("partners.name")), name,
      h("label", { for: "partner-webhook" }, tr("partners.webhook")), hook,
      h("p", { class: "muted" }, tr("partners.webhook_hint")),
      h("div", { class: "row actions" }, h("button", { type: "submit", id: "partner-create", class: "primary" }, tr("partners.create"))));
    p.append(h("div", { id: "new-key-slot" }), form,
      h("div", { class: "card" },
        h("div", { class: "panel-head" }, h("h2", {}, tr("partners.title")),
          h("button", { type: "button", id: "partners-refresh", onclick: () => PG.attempt(loadPartners) }, PG.t("refresh"))),
        h("div", { id: "partners-list" }, h("p", { class: "muted" }, PG.t("loading")))));
  }

  async function createPartner() {
    const name = document.getElementById("partner-name");
    const hook = document.getElementById("partner-webhook");
    const button = document.getElementById("partner-create");
    button.disabled = true;
    try {
      await PG.attempt(async () => {
        const body = { name: name.value.trim() };
        if (hook.value.trim()) body.webhook_url = hook.value.trim();
        const r = await api("POST", A + "/partners", body);
        name.value = "";
        hook.value = "";
        showNewKey(r);
        await loadPartners();
      });
    } finally {
      PG.enable(button);
    }
  }

  function copyButton(id, text) {
    const b = h("button", { type: "button", id, class: "copy" }, tr("partners.copy"));
    b.addEventListener("click", async () => {
      let ok = false;
      try {
        await navigator.clipboard.writeText(text);
        ok = true;
      } catch (_) {
        const ta = h("textarea", { class: "visually-hidden", "aria-hidden": "true" });
        ta.value = text;
        document.body.append(ta);
        ta.select();
        try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
        ta.remove();
      }
      b.textContent = ok ? tr("partners.copied") : tr("partners.copy_failed");
      setTimeout(() => { b.textContent = tr("partners.copy"); }, 2500);
    });
    return b;
  }

  function showNewKey(r) {
    const slot = document.getElementById("new-key-slot");
    const box = h("section", { class: "card new-key", id: "new-key-box", role: "alert", "aria-labelledby": "new-key-title" },
      h("h2", { id: "new-key-title" }, tr("partners.key_title", { name: r.name })),
      h("p", {}, h("strong", {}, tr("partners.key_once"))),
      h("label", { for: "new-api-key" }, PG.t("login.api_key")),
      h("div", { class: "secret-row" },
        h("output", { id: "new-api-key", class: "secret" }, r.api_key),
        copyButton("copy-api-key", r.api_key)),
      r.webhook_secret ? [
        h("label", { for: "new-webhook-secret" }, tr("partners.webhook_secret")),
        h("div", { class: "secret-row" },
          h("output", { id: "new-webhook-secret", class: "secret" }, r.webhook_secret),
          copyButton("copy-webhook-secret", r.webhook_secret)),
      ] : null,
      h("p", { class: "muted" }, tr("partners.copy_hint")),
      h("button", { type: "button", id: "new-api-key-done", onclick: () => replace(slot) }, tr("partners.key_saved")));
    replace(slot, box);
    box.scrollIntoView({ block: "nearest" });
    box.querySelector("#new-api-key-done").focus({ preventScroll: true });
  }

  function renderPartners() {
    const el = document.getElementById("partners-list");
    if (!el) return;
    replace(el, table("partners-table", [
      { label: tr("partners.name"), cell: (p) => p.name },
      { label: PG.t("status"), cell: (p) => p.active ? badge("ok", tr("partners.active")) : badge("bad", tr("partners.inactive")) },
      { label: tr("partners.created_at"), cell: (p) => h("time", { datetime: p.created_at }, PG.time(p.created_at)) },
      { label: tr("partners.id"), cell: (p) => h("span", { class: "mono" }, p.id) },
      { label: tr("partners.actions"), cell: (p) => h("button", {
        type: "button", id: "partner-toggle-" + p.id, class: "partner-toggle" + (p.active ? "" : " primary"),
        "data-partner-id": p.id, "aria-label": tr(p.active ? "partners.deactivate_named" : "partners.activate_named", { name: p.name }),
        onclick: () => togglePartner(p),
      }, p.active ? tr("partners.deactivate") : tr("partners.activate")) },
    ], S.partners.map((p) => ({ row: p, attrs: { "data-partner-id": p.id, "data-active": p.active ? "true" : "false" } })),
    tr("partners.none")));
  }

  async function togglePartner(p) {
    if (p.active && !(await PG.confirmDialog(tr("partners.confirm_deactivate", { name: p.name })))) return;
    await PG.attempt(async () => {
      await api("POST", `${A}/partners/${encodeURIComponent(p.id)}/${p.active ? "deactivate" : "activate"}`);
      await loadPartners();
      const b = document.getElementById("partner-toggle-" + p.id);
      if (b) b.focus();
    });
  }

  // ---------- site: mode and policy ----------

  function buildSite(p) {
    p.append(
      h("section", { class: "card", "aria-labelledby": "mode-title" },
        h("h2", { id: "mode-title" }, tr("mode.title")),
        h("p", { id: "site-mode" }),
        h("div", { class: "mode-grid" },
          h("div", {},
            h("button", { type: "button", id: "lockdown-toggle", "aria-describedby": "lockdown-hint",
              onclick: () => toggleMode("lockdown") }),
            h("p", { class: "muted", id: "lockdown-hint" }, tr("mode.lockdown_hint"))),
          h("div", {},
            h("button", { type: "button", id: "emergency-toggle", "aria-describedby": "emergency-hint",
              onclick: () => toggleMode("emergency") }),
            h("p", { class: "muted", id: "emergency-hint" }, tr("mode.emergency_hint"))))),
      h("section", { class: "card", "aria-labelledby": "policy-title" },
        h("h2", { id: "policy-title" }, tr("policy.title")),
        h("div", { id: "policy-info" }, h("p", { class: "muted" }, PG.t("loading")))),
      h("section", { class: "card", "aria-labelledby": "upload-title" },
        h("h2", { id: "upload-title" }, tr("policy.upload_title")),
        h("p", { class: "muted" }, tr("policy.upload_intro")),
        h("label", { for: "policy-file" }, tr("policy.file")),
        h("input", { id: "policy-file", type: "file", accept: ".toml,text/plain,application/toml", onchange: loadPolicyFile }),
        h("label", { for: "policy-text" }, tr("policy.text")),
        h("textarea", { id: "policy-text", spellcheck: "false", autocapitalize: "off", autocomplete: "off",
          wrap: "off", rows: 18, oninput: (ev) => { ev.target.dataset.touched = "1"; } }),
        h("div", { class: "row actions" },
          h("button", { type: "button", id: "policy-submit", class: "primary", onclick: submitPolicy }, tr("policy.submit")),
          h("button", { type: "button", id: "policy-reset", onclick: resetPolicyText }, tr("policy.reset"))),
        h("p", { id: "policy-status", role: "status", class: "notice", hidden: true }),
        h("pre", { id: "policy-errors", role: "alert", class: "policy-errors", hidden: true })));
    renderMode();
    renderPolicy();
  }

  function renderPolicy() {
    const el = document.getElementById("policy-info");
    if (!el) return;
    const text = document.getElementById("policy-text");
    const pol = S.policy;
    if (!pol) {
      replace(el, h("p", { class: "muted", id: "policy-none" }, tr("policy.none")));
      return;
    }
    // Prefill the editor with the document in force, unless the operator is editing it.
    if (text && (!text.dataset.touched || text.value === "")) {
      text.value = pol.document || "";
      text.dataset.touched = "";
    }
    const warnings = pol.warnings || [];
    replace(el,
      h("dl", { class: "facts" },
        h("dt", {}, tr("policy.sha256")), h("dd", { class: "mono", id: "policy-sha" }, pol.sha256),
        h("dt", {}, tr("policy.timezone")), h("dd", { id: "policy-timezone" }, pol.timezone),
        h("dt", {}, tr("policy.activated_at")), h("dd", {},
          h("time", { datetime: pol.activated_at, id: "policy-activated-at" }, PG.time(pol.activated_at)))),
      warnings.length ? h("div", { class: "warn-box", id: "policy-warnings" },
        h("p", {}, h("strong", {}, tr("policy.warnings"))),
        h("ul", {}, warnings.map((w) => h("li", {}, w)))) : null,
      h("details", { id: "policy-document-box" },
        h("summary", {}, tr("policy.document")),
        h("pre", { id: "policy-document", class: "toml", tabindex: "0", "aria-label": tr("policy.document") }, pol.document || "")));
  }

  function loadPolicyFile(ev) {
    const f = ev.target.files && ev.target.files[0];
    if (!f) return;
    const reader = new FileReader();
    reader.onload = () => {
      const text = document.getElementById("policy-text");
      text.value = String(reader.result || "");
      text.dataset.touched = "1";
      showPolicyErrors("");
      replace(document.getElementById("policy-status"), tr("policy.file_loaded", { name: f.name })).hidden = false;
    };
    reader.onerror = () => showPolicyErrors(PG.t("error.generic", { message: String(reader.error) }));
    reader.readAsText(f);
  }

  function resetPolicyText() {
    const text = document.getElementById("policy-text");
    text.value = S.policy ? S.policy.document || "" : "";
    text.dataset.touched = "";
    showPolicyErrors("");
    document.getElementById("policy-status").hidden = true;
  }

  function showPolicyErrors(message) {
    const pre = document.getElementById("policy-errors");
    if (!message) {
      pre.hidden = true;
      pre.textContent = "";
      return;
    }
    // The server lists every problem after "invalid site policy: ", separated by "; ":
    // one per line, each verbatim.
    const m = /^invalid site policy: ([\s\S]*)$/.exec(message);
    pre.textContent = m ? tr("policy.invalid") + "\n" + m[1].split("; ").map((x) => "• " + x).join("\n") : message;
    pre.hidden = false;
  }

  async function submitPolicy() {
    const text = document.getElementById("policy-text");
    const status = document.getElementById("policy-status");
    const button = document.getElementById("policy-submit");
    showPolicyErrors("");
    status.hidden = true;
    if (!text.value.trim()) {
      showPolicyErrors(tr("policy.empty"));
      return;
    }
    if (!(await PG.confirmDialog(tr("policy.confirm")))) return;
    button.disabled = true;
    try {
      const r = await api("PUT", A + "/policy", text.value, { contentType: "application/toml" });
      text.dataset.touched = "";
      await loadPolicy();
      text.value = S.policy ? S.policy.document : text.value;
      replace(status, tr("policy.activated", { sha: r && r.sha256 ? r.sha256 : "" })).hidden = false;
      refreshDoors();
    } catch (e) {
      if (e.status === 401) return;
      showPolicyErrors(e.status === 400 || e.status === 422 ? e.message : PG.errorText(e));
      document.getElementById("policy-errors").scrollIntoView({ block: "nearest" });
    } finally {
      PG.enable(button);
    }
  }

  // ---------- audit ----------

  function buildAudit(p) {
    const now = new Date();
    const dayAgo = new Date(now.getTime() - 7 * 24 * 3600 * 1000);
    const local = (d) => {
      const z = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
      return z.toISOString().slice(0, 16);
    };
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    p.append(h("section", { class: "card", "aria-labelledby": "audit-title" },
      h("h2", { id: "audit-title" }, tr("audit.title")),
      h("p", { class: "muted" }, tr("audit.intro")),
      h("div", { class: "grid audit-grid" },
        h("div", {}, h("label", { for: "audit-from" }, tr("audit.from")),
          h("input", { id: "audit-from", type: "datetime-local", value: local(dayAgo), oninput: updateAudit })),
        h("div", {}, h("label", { for: "audit-to" }, tr("audit.to")),
          h("input", { id: "audit-to", type: "datetime-local", oninput: updateAudit })),
        h("div", {}, h("label", { for: "audit-format" }, tr("audit.format")),
          h("select", { id: "audit-format", onchange: updateAudit },
            h("option", { value: "csv" }, PG.t("format.csv")),
            h("option", { value: "jsonl" }, PG.t("format.jsonl"))))),
      h("p", { class: "muted", id: "audit-tz" }, tr("audit.tz", { tz })),
      h("p", { class: "mono muted", id: "audit-range" }),
      h("div", { class: "row actions" },
        h("a", { id: "audit-download", class: "button primary", download: "palmgate-audit.csv", href: "#" }, tr("audit.download")))));
    updateAudit();
  }

  // RFC 3339 in UTC (no milliseconds) of a datetime-local value, or "" when empty.
  function utc(value) {
    if (!value) return "";
    const d = new Date(value);
    return isNaN(d) ? "" : d.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function updateAudit() {
    const from = utc(document.getElementById("audit-from").value);
    const to = utc(document.getElementById("audit-to").value);
    const format = document.getElementById("audit-format").value;
    const q = new URLSearchParams();
    if (from) q.set("from", from);
    if (to) q.set("to", to);
    q.set("format", format);
    const a = document.getElementById("audit-download");
    a.href = A + "/audit/export?" + q.toString();
    a.setAttribute("download", "palmgate-audit." + format);
    replace(document.getElementById("audit-range"),
      tr("audit.range", { from: from || tr("audit.beginning"), to: to || tr("audit.now") }));
  }

  // ---------- start ----------

  async function start() {
    let people = null;
    try {
      people = await api("GET", A + "/demo/people");
    } catch (e) {
      if (e.status === 401) return;
      people = null; // 404 outside demo mode
    }
    S.people = Array.isArray(people) ? people : [];
    await PG.attempt(async () => {
      const [doors] = await Promise.all([
        api("GET", A + "/doors"),
        api("GET", A + "/partners").then((p) => { S.partners = p; }),
        // The newest users' names for the feed; older ones are asked for as they show up.
        apiPage(A + "/users?limit=" + USERS_PAGE).then(({ rows }) => rememberNames(rows)),
      ]);
      S.doors = doors;
    });
    boot(Array.isArray(people));
    await PG.attempt(backfill);
    follow();
    await PG.attempt(loadMode);
    // A fallback for a stream that misses something: the doors every few seconds. The readers
    // too: the broker link (broker_up) is no event of the log, so the stream never tells it.
    await PG.attempt(loadReaders);
    // Stops for good once the login has ended (expiry, sign-out elsewhere, a new admin token):
    // every refused poll would spend the address's budget for calls without a credential, and
    // a few forgotten tabs would lock the operator's own sign-in out (429).
    let timer = null;
    const stopOn401 = (e) => {
      if (e && e.status === 401) {
        clearInterval(timer);
        document.removeEventListener("visibilitychange", poll);
      }
    };
    const poll = () => {
      if (document.hidden) return;
      loadDoors().catch(stopOn401);
      loadReaders().catch(stopOn401);
    };
    timer = setInterval(poll, 4000);
    document.addEventListener("visibilitychange", poll);
  }

  start();
})();
