// roster web console: a small single-page app over the native HTTP API.
// Routes (in the URL fragment): #/ services, #/service/NAME one service,
// #/status the registry. Live data: blocking queries for the service list, the
// Server-Sent Events watch stream for a service (read with fetch, since
// EventSource cannot send an Authorization header), and a poll of the lease
// ages. Nothing is loaded from anywhere but this registry.
"use strict";

(() => {
  const API = "../"; // the page is served at /ui/; the API is beside it
  const TOKEN_KEY = "roster.token";
  const LIST_WAIT = "55s";
  const LEASE_POLL_MS = 3000;

  const $ = (sel, root = document) => root.querySelector(sel);
  const main = $("#main");
  const notice = $("#notice");
  const live = $("#live");

  // --- small DOM helpers -------------------------------------------------

  /** el("td", {class: "num"}, child, "text", …): an element with attributes and children. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  // One shape per state, so health reads without colour: a check in a circle,
  // a triangle, a cross in an octagon, two pause bars.
  const ICONS = {
    passing: '<circle cx="8" cy="8" r="7" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M4.6 8.3l2.2 2.2 4.6-4.8" fill="none" stroke="currentColor" stroke-width="1.8"/>',
    warning: '<path d="M8 1.5l7 12.5H1z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/><path d="M8 6v4M8 11.6v1.2" stroke="currentColor" stroke-width="1.8"/>',
    critical: '<path d="M5.1 1h5.8L15 5.1v5.8L10.9 15H5.1L1 10.9V5.1z" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M5.5 5.5l5 5M10.5 5.5l-5 5" stroke="currentColor" stroke-width="1.8"/>',
    maintenance: '<rect x="1" y="1" width="14" height="14" rx="3" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M6 4.5v7M10 4.5v7" stroke="currentColor" stroke-width="2"/>',
  };

  function icon(kind) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 16 16");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.innerHTML = ICONS[kind] || "";
    return svg;
  }

  /** A health badge: icon + word (+ optional count). */
  function badge(kind, text) {
    return el("span", { class: `health h-${kind}`, "data-health": kind }, icon(kind), text || kind);
  }

  function announce(text) {
    const p = el("p", { text });
    live.append(p);
    while (live.childNodes.length > 5) live.firstChild.remove();
  }

  function ago(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s ago`;
    const h = Math.floor(m / 60);
    return `${h} h ${m % 60} min ago`;
  }

  function uptime(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600);
    const m = Math.floor((secs % 3600) / 60), s = secs % 60;
    return [d && `${d} d`, (d || h) && `${h} h`, (d || h || m) && `${m} min`, `${s} s`].filter(Boolean).join(" ");
  }

  // --- token and API -------------------------------------------------------

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY) || "",
    set(v) {
      if (v) sessionStorage.setItem(TOKEN_KEY, v);
      else sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
    },
  };

  function showTokenState() {
    $("#token-state").textContent = token.get()
      ? "A token is set for this tab (kept until the tab closes)."
      : "No token: anonymous requests.";
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
    get denied() {
      return this.status === 401 || this.status === 403;
    }
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const t = token.get();
    if (t) h.Authorization = `Bearer ${t}`;
    return h;
  }

  async function failure(resp) {
    let detail = `${resp.status} ${resp.statusText}`.trim();
    try {
      const body = await resp.json();
      if (body && body.detail) detail = body.detail;
    } catch (_) { /* not a problem document */ }
    return new ApiError(resp.status, detail);
  }

  async function api(path, opts = {}) {
    let resp;
    try {
      resp = await fetch(API + path, {
        method: opts.method || "GET",
        headers: headers(opts.body ? { "Content-Type": "application/json" } : null),
        body: opts.body ? JSON.stringify(opts.body) : undefined,
        signal: opts.signal,
        cache: "no-store",
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "the registry cannot be reached");
    }
    if (!resp.ok) throw await failure(resp);
    if (resp.status === 204) return null;
    if (opts.exactIds) return JSON.parse(await resp.text(), exactIds);
    return resp.json();
  }

  // Raft node ids go up to 2^63: as JS numbers they would lose their last
  // digits, so they are kept as the JSON text (where the browser gives it).
  const ID_KEYS = new Set(["id", "node", "leader", "replication_view"]);
  function exactIds(key, value, context) {
    return ID_KEYS.has(key) && typeof value === "number" && context && context.source ? context.source : value;
  }

  /** The message for a refused read. */
  function readRefusal(err) {
    if (err.status === 401) return `Reading the catalog needs a token with read rights: enter one in “Access token” above. (${err.detail})`;
    if (err.status === 403) return `This token may not read the catalog: ${err.detail}`;
    return `Could not load: ${err.detail}`;
  }

  /** The message for a refused write. */
  function writeRefusal(err, needs) {
    if (err.denied) return `This action needs a token with ${needs} rights. The registry said: ${err.detail}`;
    return `Failed: ${err.detail}`;
  }

  function showNotice(text) {
    notice.replaceChildren(el("span", { text }), el("button", { type: "button", onclick: hideNotice }, "Dismiss"));
    notice.hidden = false;
  }

  function hideNotice() {
    notice.hidden = true;
    notice.replaceChildren();
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

  // --- views -----------------------------------------------------------------

  let view = null; // { abort: AbortController, timers: [] }

  function leaveView() {
    if (!view) return;
    view.abort.abort();
    view.timers.forEach(clearInterval);
    view = null;
  }

  function route() {
    leaveView();
    hideNotice();
    view = { abort: new AbortController(), timers: [] };
    const hash = location.hash.replace(/^#/, "") || "/";
    const m = hash.match(/^\/service\/([^/?]+)$/);
    let current = "services";
    if (m) servicePage(decodeURIComponent(m[1]), view);
    else if (hash === "/status") { current = "status"; statusPage(view); }
    else servicesPage(view);
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  function heading(text) {
    return el("h1", { tabindex: "-1" }, text);
  }

  function focusHeading() {
    const h = $("h1", main);
    if (h && navigated) h.focus({ preventScroll: false });
  }
  let navigated = false;

  // The services list ---------------------------------------------------------

  function servicesPage(v) {
    document.title = "Services · roster";
    const filter = el("input", {
      id: "filter", type: "search", placeholder: "name or tag",
      "aria-controls": "services-table", "aria-describedby": "filter-count",
    });
    const count = el("span", { id: "filter-count", class: "muted", "aria-live": "polite" });
    const conn = el("span", { class: "conn", text: "connecting" });
    const body = el("tbody");
    const msg = el("p", { class: "muted", id: "list-msg" });
    const table = el("div", { class: "table-wrap" },
      el("table", { id: "services-table" },
        el("caption", { class: "visually-hidden", text: "Registered services and their instances by health" }),
        el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Service"),
          el("th", { scope: "col", class: "num" }, "Instances"),
          el("th", { scope: "col" }, "Health"),
          el("th", { scope: "col" }, "Tags"))),
        body));
    main.replaceChildren(
      heading("Services"),
      el("div", { class: "toolbar" },
        el("label", { for: "filter" }, "Filter services"), filter, count, conn),
      msg, table);
    focusHeading();

    let services = [];
    const draw = () => {
      const q = filter.value.trim().toLowerCase();
      const shown = services.filter((s) => !q || s.name.includes(q) || s.tags.some((t) => t.toLowerCase().includes(q)));
      body.replaceChildren(...shown.map(serviceRow));
      count.textContent = `${shown.length} of ${services.length} services`;
      table.hidden = shown.length === 0;
      if (services.length === 0) msg.textContent = "No services are registered.";
      else if (shown.length === 0) msg.textContent = `No service matches “${filter.value.trim()}”.`;
      else msg.textContent = "";
    };
    filter.addEventListener("input", draw);

    (async () => {
      let index = 0;
      let backoff = 1000;
      while (!v.abort.signal.aborted) {
        try {
          const q = index ? `?index=${index}&wait=${LIST_WAIT}` : "";
          const list = await api(`v1/services${q}`, { signal: v.abort.signal });
          index = list.index;
          services = list.services;
          backoff = 1000;
          conn.textContent = "live";
          conn.classList.add("live");
          hideNotice();
          draw();
        } catch (e) {
          if (e.name === "AbortError") return;
          conn.textContent = "disconnected";
          conn.classList.remove("live");
          msg.textContent = readRefusal(e);
          if (e.denied) return; // wait for a token: setting one reloads the view
          await sleep(backoff, v.abort.signal);
          backoff = Math.min(backoff * 2, 15000);
          index = 0;
        }
      }
    })();
  }

  function serviceRow(s) {
    const counts = el("span", { class: "counts" });
    if (s.passing) counts.append(badge("passing", `${s.passing} passing`));
    if (s.warning) counts.append(badge("warning", `${s.warning} warning`));
    if (s.critical) counts.append(badge("critical", `${s.critical} critical`));
    if (!s.instances) counts.append(el("span", { class: "muted", text: "no instances" }));
    return el("tr", { "data-service": s.name },
      el("th", { scope: "row" }, el("a", { href: `#/service/${encodeURIComponent(s.name)}` }, s.name)),
      el("td", { class: "num", "data-count": "instances" }, String(s.instances)),
      el("td", {}, counts),
      el("td", {}, s.tags.length ? s.tags.map((t) => el("span", { class: "tag" }, t)) : el("span", { class: "muted", text: "—" })));
  }

  // One service --------------------------------------------------------------

  function servicePage(name, v) {
    document.title = `${name} · roster`;
    const conn = el("span", { class: "conn", text: "connecting" });
    const summary = el("p", { class: "counts", id: "summary" });
    const msg = el("p", { class: "muted", id: "service-msg" });
    const list = el("div", { class: "instances", id: "instances" });
    main.replaceChildren(
      el("p", {}, el("a", { href: "#/" }, "← All services")),
      heading(name),
      el("div", { class: "toolbar" }, summary, conn),
      msg, list);
    focusHeading();

    const cards = new Map(); // id -> { node, json, health }
    const leases = { at: 0, byId: new Map() };

    const render = (instances) => {
      const seen = new Set();
      const counts = { passing: 0, warning: 0, critical: 0, maintenance: 0 };
      instances.forEach((inst, i) => {
        seen.add(inst.id);
        const state = inst.maintenance ? "maintenance" : inst.health;
        counts[state]++;
        const json = JSON.stringify(inst);
        const old = cards.get(inst.id);
        if (old && old.json === json) {
          if (list.children[i] !== old.node) list.insertBefore(old.node, list.children[i] || null);
          return;
        }
        const node = instanceCard(name, inst, old && old.node);
        if (old && old.state !== state) announce(`${inst.id} is now ${state}`);
        if (old) old.node.replaceWith(node);
        list.insertBefore(node, list.children[i] || null);
        cards.set(inst.id, { node, json, state });
      });
      for (const [id, c] of cards) {
        if (!seen.has(id)) {
          c.node.remove();
          cards.delete(id);
          announce(`${id} was deregistered`);
        }
      }
      summary.replaceChildren(
        ...["passing", "warning", "critical", "maintenance"]
          .filter((k) => counts[k])
          .map((k) => badge(k, `${counts[k]} ${k}`)));
      msg.textContent = instances.length ? "" : "This service has no instances.";
      drawLeases();
    };

    const drawLeases = () => {
      const elapsed = leases.at ? Date.now() - leases.at : 0;
      for (const node of list.querySelectorAll("[data-lease]")) {
        const l = leases.byId.get(node.dataset.lease);
        if (!l) {
          node.textContent = leases.at ? "no lease (registered without a ttl)" : "…";
          continue;
        }
        const when = ago(l.renewed_ago_ms + elapsed);
        node.textContent = l.expired ? `${when} (lease expired, ttl ${l.ttl})` : `${when} (ttl ${l.ttl})`;
      }
    };

    const pollLeases = async () => {
      try {
        const r = await api(`v1/services/${encodeURIComponent(name)}/leases`, { signal: v.abort.signal });
        leases.byId = new Map(r.leases.map((l) => [l.id, l]));
        leases.at = Date.now();
        drawLeases();
      } catch (_) { /* the stream reports access and connection problems */ }
    };
    pollLeases();
    v.timers.push(setInterval(pollLeases, LEASE_POLL_MS), setInterval(drawLeases, 1000));

    watch(`v1/services/${encodeURIComponent(name)}/watch`, v, {
      onEvent(ev) {
        render(ev.instances);
        conn.textContent = `live · index ${ev.index}`;
        conn.classList.add("live");
        hideNotice();
      },
      onError(e) {
        conn.textContent = "disconnected";
        conn.classList.remove("live");
        msg.textContent = readRefusal(e);
      },
    });
  }

  /** Follows an SSE stream, reconnecting with Last-Event-ID until the view is left. */
  async function watch(path, v, { onEvent, onError }) {
    let lastId = null;
    let backoff = 1000;
    while (!v.abort.signal.aborted) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastId) h["Last-Event-ID"] = lastId;
        let resp;
        try {
          resp = await fetch(API + path, { headers: h, signal: v.abort.signal, cache: "no-store" });
        } catch (e) {
          if (e.name === "AbortError") throw e;
          throw new ApiError(0, "the registry cannot be reached");
        }
        if (!resp.ok) throw await failure(resp);
        backoff = 1000;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let event = "message", data = [], id = null;
            for (const line of block.split("\n")) {
              if (!line || line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              let val = colon < 0 ? "" : line.slice(colon + 1);
              if (val.startsWith(" ")) val = val.slice(1);
              if (field === "event") event = val;
              else if (field === "data") data.push(val);
              else if (field === "id") id = val;
            }
            if (id !== null) lastId = id;
            if (event === "service" && data.length) onEvent(JSON.parse(data.join("\n")));
          }
        }
      } catch (e) {
        if (e.name === "AbortError") return;
        onError(e instanceof ApiError ? e : new ApiError(0, e.message));
        if (e.denied) return; // wait for a token: setting one reloads the view
      }
      await sleep(backoff, v.abort.signal);
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  function instanceCard(service, inst, previous) {
    const state = inst.maintenance ? "maintenance" : inst.health;
    const idAttr = inst.id.replace(/[^A-Za-z0-9_-]/g, "_");
    const headingId = `inst-${idAttr}`;
    const tags = inst.tags.length ? inst.tags.map((t) => el("span", { class: "tag" }, t)) : el("span", { class: "muted", text: "none" });
    const meta = Object.entries(inst.meta || {});
    const facts = el("dl", { class: "facts" },
      el("dt", {}, "Address"), el("dd", { class: "mono" }, `${inst.address}:${inst.port}`),
      el("dt", {}, "Tags"), el("dd", {}, tags),
      el("dt", {}, "Metadata"), el("dd", {}, meta.length
        ? meta.map(([k, val]) => el("span", { class: "tag mono" }, `${k}=${val}`))
        : el("span", { class: "muted", text: "none" })),
      el("dt", {}, "Weights"), el("dd", {}, `passing ${inst.weights.passing}, warning ${inst.weights.warning}`),
      el("dt", {}, "Last heartbeat"), el("dd", { "data-lease": inst.id }, inst.ttl ? "…" : "no lease (registered without a ttl)"),
      inst.maintenance && [el("dt", {}, "Maintenance"), el("dd", {}, inst.maintenance.reason || "no reason given")]);

    const checks = el("div", { class: "table-wrap" },
      el("table", {},
        el("caption", { class: "visually-hidden", text: `Checks of ${inst.id}` }),
        el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Check"),
          el("th", { scope: "col" }, "Status"),
          el("th", { scope: "col" }, "Last output"))),
        el("tbody", {}, inst.checks.length
          ? inst.checks.map((c) => el("tr", { "data-check": c.id },
            el("th", { scope: "row" }, el("span", { class: "mono" }, c.id), " ",
              el("span", { class: "muted" }, `(${c.kind}${c.ttl ? ` ${c.ttl}` : ""}${c.interval ? ` every ${c.interval}` : ""})`),
              c.name && c.name !== c.id ? el("div", { class: "muted" }, c.name) : null),
            el("td", {}, badge(c.status)),
            el("td", {}, el("pre", { class: "output" }, c.output || "—"))))
          : el("tr", {}, el("td", { colspan: "3", class: "muted" }, "No checks: the instance counts as passing.")))));

    const actionMsg = el("p", { class: "action-msg", role: "status" });
    const reasonId = `reason-${idAttr}`;
    const oldReason = previous && previous.querySelector(`#${reasonId}`);
    const reason = el("input", { id: reasonId, type: "text", maxlength: "256", placeholder: "optional", "data-key": "reason" });
    if (oldReason) reason.value = oldReason.value;
    const base = `v1/services/${encodeURIComponent(service)}/instances/${encodeURIComponent(inst.id)}`;

    // A live update may redraw the card while the call runs: report in the
    // card that is on the page then.
    const say = (cls, text) => {
      const card = document.querySelector(`article[data-instance="${CSS.escape(inst.id)}"]`);
      const target = (card && card.querySelector(".action-msg")) || actionMsg;
      target.className = `action-msg ${cls}`;
      target.textContent = text;
    };
    const run = async (button, call, needs, done) => {
      button.disabled = true;
      say("", "Working…");
      try {
        await call();
        say("ok", done);
      } catch (e) {
        say("error", writeRefusal(e, needs));
      } finally {
        button.disabled = false;
      }
    };

    const maint = el("button", { type: "button", "data-action": "maintenance", "data-key": "maint" },
      inst.maintenance ? "End maintenance" : "Start maintenance");
    maint.addEventListener("click", () => run(maint, () => api(`${base}/maintenance`, {
      method: "PUT",
      body: inst.maintenance ? { enabled: false } : { enabled: true, reason: reason.value.trim() || "set from the web console" },
    }), "admin", inst.maintenance ? "Maintenance ended." : "Maintenance started."));

    const dereg = el("button", { type: "button", class: "danger", "data-action": "deregister", "data-key": "dereg" }, "Deregister…");
    const confirmBox = el("span", { class: "actions-confirm", hidden: true },
      el("span", {}, `Remove ${inst.id} from the catalog? `));
    const yes = el("button", { type: "button", class: "danger", "data-action": "confirm-deregister" }, "Yes, deregister");
    const no = el("button", { type: "button", "data-action": "cancel-deregister" }, "Cancel");
    confirmBox.append(yes, " ", no);
    dereg.addEventListener("click", () => { confirmBox.hidden = false; dereg.hidden = true; no.focus(); });
    no.addEventListener("click", () => { confirmBox.hidden = true; dereg.hidden = false; dereg.focus(); });
    yes.addEventListener("click", () => run(yes, () => api(base, { method: "DELETE" }), "write", "Deregistered."));

    const actions = el("div", { class: "actions", role: "group", "aria-label": `Actions on ${inst.id}` },
      !inst.maintenance && [el("label", { for: reasonId }, "Maintenance reason"), reason],
      maint, dereg, confirmBox, actionMsg);

    const node = el("article", { class: `instance b-${state}`, "data-instance": inst.id, "aria-labelledby": headingId },
      el("div", { class: "instance-head" },
        el("h2", { id: headingId }, inst.id),
        el("span", { "data-role": "instance-health" }, badge(state))),
      facts,
      el("h3", {}, "Checks"),
      checks,
      actions);

    // Keep keyboard focus where it was when a live update redraws the card.
    const focused = previous && previous.contains(document.activeElement) && document.activeElement.dataset.key;
    if (focused) requestAnimationFrame(() => { const f = node.querySelector(`[data-key="${focused}"]`); if (f) f.focus(); });
    const prevMsg = previous && previous.querySelector(".action-msg");
    if (prevMsg && prevMsg.textContent) { actionMsg.className = prevMsg.className; actionMsg.textContent = prevMsg.textContent; }
    return node;
  }

  // The registry's status -----------------------------------------------------

  /** The cluster's members as the leader sees them (GET /v1/operator/raft). */
  async function raftMembers(v) {
    const section = (...body) => el("section", { class: "card members", "aria-label": "Cluster members", id: "members" },
      el("h2", {}, "Cluster members"), ...body);
    let s;
    try {
      s = await api("v1/operator/raft", { signal: v.abort.signal, exactIds: true });
    } catch (e) {
      if (e.name === "AbortError") return undefined;
      return section(el("p", { class: "muted", "data-field": "members-note" },
        e.denied ? `Listing the members needs an admin token: ${e.detail}` : `Could not load the members: ${e.detail}`));
    }
    const known = s.replication_view !== null && s.replication_view !== undefined;
    const rows = s.members.map((m) => el("tr", { "data-node": String(m.id), "data-addr": m.addr },
      el("td", {}, String(m.id)),
      el("td", {}, m.addr),
      el("td", {}, m.leader ? "leader" : "follower"),
      el("td", {}, m.voter ? "voter" : "learner"),
      el("td", { "data-col": "reachable" }, m.reachable === true ? badge("passing", "reachable")
        : m.reachable === false ? badge("critical", "unreachable") : "unknown"),
      el("td", { "data-col": "contact" }, m.last_contact_ms === null || m.last_contact_ms === undefined
        ? "never" : (m.last_contact_ms < 1000 ? `${m.last_contact_ms} ms ago` : ago(m.last_contact_ms))),
      el("td", { class: "num", "data-col": "lag" }, m.lag === null || m.lag === undefined ? "unknown" : `${m.lag} entries`)));
    return section(
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Node", "Address", "Role", "Votes", "Leader reaches it", "Last contact", "Behind"]
          .map((t) => el("th", { scope: "col" }, t)))),
        el("tbody", {}, rows))),
      el("p", { class: "muted", "data-field": "members-note" }, known
        ? `As node ${s.replication_view} (the leader) sees them: unreachable after three heartbeats without an answer.`
        : "Reachability, last contact and lag are known only on the leader, which did not answer."));
  }

  function statusPage(v) {
    document.title = "Status · roster";
    const grid = el("div", { class: "status-grid", id: "status" });
    const msg = el("p", { class: "muted" });
    main.replaceChildren(heading("Registry status"), msg, grid);
    focusHeading();

    const card = (title, rows) => el("section", { class: "card", "aria-label": title },
      el("h2", {}, title),
      el("dl", {}, rows.map(([k, val, key]) => [el("dt", {}, k), el("dd", { "data-field": key }, val)])));

    const load = async () => {
      try {
        const h = await api("health", { signal: v.abort.signal, exactIds: true });
        let totals = null;
        let totalsNote = "";
        try {
          const list = await api("v1/services", { signal: v.abort.signal });
          totals = { passing: 0, warning: 0, critical: 0 };
          for (const s of list.services) { totals.passing += s.passing; totals.warning += s.warning; totals.critical += s.critical; }
        } catch (e) {
          if (e.name === "AbortError") return;
          totalsNote = e.denied ? "needs a token with read rights" : e.detail;
        }
        const g = h.self_preservation_status || {};
        const sp = h.self_preservation
          ? el("span", { class: "warning-text" }, badge("warning", "active"),
            ` for ${uptime(g.active_seconds || 0)}: holding ${g.held || 0} overdue leases`)
          : "inactive";
        const guardRows = [
          ["Self-preservation", sp, "self-preservation"],
          ["Longest hold", h.self_preservation ? uptime(g.oldest_hold_seconds || 0) : "none", "oldest-hold"],
          ["Max hold", `${uptime(g.max_hold_seconds || 0)} past a lease's deadline`, "max-hold"],
          ["Drain", h.self_preservation
            ? `${g.drain_per_minute || 0} released per minute; all held now released within ${uptime(g.drained_within_seconds || 0)}`
            : `${g.released_total || 0} held leases released so far`, "drain"],
        ];
        grid.replaceChildren(
          card("Registry", [
            ["Version", h.version, "version"],
            ["Uptime", uptime(h.uptime_seconds || 0), "uptime"],
            ["Catalog index", String(h.index), "index"],
            ["Status", h.status, "status"],
          ]),
          card("Catalog", [
            ["Services", String(h.services), "services"],
            ["Instances", String(h.instances), "instances"],
            ["By health", totals
              ? el("span", { class: "counts" },
                badge("passing", `${totals.passing} passing`),
                badge("warning", `${totals.warning} warning`),
                badge("critical", `${totals.critical} critical`))
              : el("span", { class: "muted" }, totalsNote), "by-health"],
          ]),
          card("Leases", [
            ...guardRows,
            ...(h.warnings || []).map((w) => ["Warning", w, "warning"]),
          ]),
          card("Replication", [
            ["Role", h.raft ? `${h.raft.state.toLowerCase()} (node ${h.raft.node}, term ${h.raft.term})` : "single node", "role"],
            ["Leader", h.raft ? (h.raft.leader === null || h.raft.leader === undefined ? "none known" : `node ${h.raft.leader}`) : "not clustered", "leader"],
          ]));
        if (h.federation) {
          // This datacenter first, then the federated ones by round-trip time.
          grid.append(card("Datacenters", h.federation.datacenters.map((d) => [
            d.name,
            d.local ? "this datacenter"
              : el("span", {}, badge(d.state === "up" ? "passing" : "critical", d.state),
                ` ${d.rtt_ms === undefined ? "no RTT yet" : `${d.rtt_ms} ms`}, circuit ${d.circuit}`),
            `dc-${d.name}`,
          ])));
        }
        if (h.raft) {
          const members = await raftMembers(v);
          if (members === undefined) return;
          grid.append(members);
        }
        msg.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
      } catch (e) {
        if (e.name === "AbortError") return;
        msg.textContent = `Could not load the status: ${e.detail}`;
      }
    };
    load();
    v.timers.push(setInterval(load, 5000));
  }

  // --- start -------------------------------------------------------------------

  $("#token").value = token.get();
  showTokenState();
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token.set($("#token").value.trim());
    announce(token.get() ? "Token set." : "Token cleared.");
    route();
  });
  $("#token-clear").addEventListener("click", () => {
    $("#token").value = "";
    token.set("");
    announce("Token cleared.");
    route();
  });
  window.addEventListener("hashchange", () => { navigated = true; route(); });
  route();
})();
