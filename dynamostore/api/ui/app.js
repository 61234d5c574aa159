// dynamostore operator console. Plain JavaScript, no build step; charts by the vendored uPlot.
//
// Every POLL_MS the page reads this node's /status and the samples of /status/history it does not have yet
// (the node keeps the last minutes, one sample a second, so the charts start full), then redraws the tab
// on screen. Nothing is polled while the tab is hidden. The membership tab also reads /admin/members and
// /admin/plan; the key inspector reads /debug/kv/{key}. Every fetch carries the token pasted into the page
// (Authorization: Bearer), if any. All text from the node goes into the page as text, never as HTML.
"use strict";
(function () {
  const POLL_MS = 2000;
  const PLAN_MS = 5000;
  const TOKEN_KEY = "dynamostore.token";
  const PALETTE = ["#2454c5", "#d9480f", "#2b8a3e", "#ae3ec9", "#1098ad", "#c2255c", "#5c940d", "#7048e8",
                   "#e67700", "#495057", "#0b7285", "#a61e4d"];

  const S = {
    status: null, samples: [], seq: 0, capacity: 300, tab: "overview", inspectKey: "",
    lastOk: 0, error: null, charts: {}, admin: null, adminAt: 0, adminError: null, timer: null,
  };

  // --- small helpers ------------------------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "style") el.style.cssText = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  function fill(el, ...kids) { el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false)); }

  function ago(s) {
    if (s === null || s === undefined) return "never";
    if (s < 1) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (digits === undefined) digits = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2;
    return Number(x).toLocaleString(undefined, {maximumFractionDigits: digits, minimumFractionDigits: 0});
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({"Accept": "application/json"}, opts.headers || {});
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    const r = await fetch(path, Object.assign({}, opts, {headers: headers, cache: "no-store"}));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const err = new Error((body && body.reason) || (r.status + " " + r.statusText));
      err.status = r.status;
      err.body = body;
      throw err;
    }
    return body;
  }

  function members() { return S.status ? S.status.members : []; }

  function colorOf(id) {
    const ids = members().map((m) => m.id).sort();
    const i = ids.indexOf(id);
    return PALETTE[(i < 0 ? ids.length : i) % PALETTE.length];
  }

  function upSet() {
    const up = new Set();
    for (const m of members()) if (m.liveness && m.liveness.up) up.add(m.id);
    return up;
  }

  // --- polling -----------------------------------------------------------------------------------------

  function schedule(ms) {
    clearTimeout(S.timer);
    S.timer = setTimeout(poll, ms === undefined ? POLL_MS : ms);
  }

  async function poll() {
    if (document.hidden) { schedule(); return; }
    try {
      const [st, hist] = await Promise.all([api("/status"), api("/status/history?since=" + S.seq)]);
      S.status = st;
      if (hist.seq < S.seq) {  // the node restarted: its history starts again
        S.samples = [];
        S.seq = 0;
        schedule(0);
        return;
      }
      S.capacity = hist.capacity || S.capacity;
      for (const s of hist.samples) S.samples.push(s);
      if (S.samples.length > S.capacity) S.samples.splice(0, S.samples.length - S.capacity);
      S.seq = hist.seq;
      S.lastOk = Date.now();
      S.error = null;
    } catch (e) {
      S.error = e;
    }
    if (S.tab === "membership" && Date.now() - S.adminAt >= PLAN_MS) await loadAdmin();
    render();
    schedule();
  }

  // --- header, connection, token -------------------------------------------------------------------------

  function renderHeader() {
    const conn = $("conn");
    const st = S.status;
    if (S.error) {
      const auth = S.error.status === 401 || S.error.status === 403;
      conn.dataset.state = "lost";
      conn.textContent = auth ? "token needed" : "node unreachable";
      showBanner(auth ? "This node requires a token for " + (S.error.status === 401 ? "reading its status" : "that")
        + ": paste one under \u201ctoken\u201d (" + S.error.message + ")."
        : "Cannot reach this node (" + S.error.message + ")" + (S.lastOk ? "; showing what it said "
          + ago((Date.now() - S.lastOk) / 1000) + "." : "."));
    } else if (st) {
      conn.dataset.state = "live";
      conn.textContent = "live";
      showBanner(null);
    }
    if (!st) return;
    const r = st.ring;
    fill($("node-title"), "node ", h("b", {text: st.node}), " · ring epoch ", h("b", {text: r.epoch}),
      " · Q=" + r.partitions + " N=" + r.n_val + " · up " + ago(st.uptime_s).replace(" ago", ""));
    $("token-state").textContent = token() ? "token set" : "token";
    fill($("footer"), "Polling /status every " + POLL_MS / 1000 + " s; history: " + S.samples.length
      + " samples. Other nodes' consoles: ",
      members().map((m) => [h("a", {href: location.protocol + "//" + m.http + "/ui/" + location.hash, text: m.id}), " "]));
  }

  function showBanner(text) {
    const b = $("banner");
    if (!text) { b.hidden = true; return; }
    b.hidden = false;
    b.textContent = text;
  }

  function setupToken() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = $("token-input").value.trim();
      if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
      $("token-input").value = "";
      document.querySelector("details.token").open = false;
      S.adminAt = 0;
      poll();
    });
    $("token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      document.querySelector("details.token").open = false;
      poll();
    });
  }

  // --- charts ------------------------------------------------------------------------------------------

  function chart(id, series, data, opts) {
    const el = $(id);
    if (!el || el.offsetParent === null || typeof uPlot === "undefined") return;
    const key = series.map((s) => s.label).join("|");
    let c = S.charts[id];
    if (c && c.key !== key) { c.u.destroy(); c = null; }
    if (data[0].length === 0) {
      if (c) { c.u.destroy(); delete S.charts[id]; }
      fill(el, h("div", {class: "empty", text: "no samples yet"}));
      return;
    }
    if (!c) {
      el.replaceChildren();
      const u = new uPlot({
        width: Math.max(200, el.clientWidth), height: 200,
        series: [{}].concat(series.map((s) => ({label: s.label, stroke: s.stroke, width: 2, dash: s.dash,
          points: {show: !!(opts && opts.points), size: 4}, value: (u, v) => fmt(v)}))),
        scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max((opts && opts.minMax) || 1, max * 1.1)]}},
        axes: [{}, {size: 56}],
        cursor: {drag: {x: false, y: false}},
      }, data, el);
      c = S.charts[id] = {u: u, key: key};
    } else {
      c.u.setData(data);
    }
  }

  function xs() { return S.samples.map((s) => s.t); }
  function col(fn) { return S.samples.map(fn); }

  window.addEventListener("resize", () => {
    for (const [id, c] of Object.entries(S.charts)) {
      const el = $(id);
      if (el && el.clientWidth) c.u.setSize({width: el.clientWidth, height: 200});
    }
  });

  // --- overview ----------------------------------------------------------------------------------------

  function card(label, value, cls, testid) {
    return h("div", {class: "card " + (cls || ""), "data-card": testid},
      h("div", {class: "label", text: label}), h("div", {class: "value", text: value}));
  }

  function recent(fn, n) {
    const tail = S.samples.slice(-(n || 5)).map(fn).filter((v) => v !== null && v !== undefined);
    if (!tail.length) return null;
    return tail.reduce((a, b) => a + b, 0) / tail.length;
  }

  function renderOverview() {
    const st = S.status;
    const ms = members();
    const up = ms.filter((m) => m.liveness && m.liveness.up).length;
    const ho = st.handoff || {pending: {}, delivered: {}, pending_total: 0};
    const last = S.samples[S.samples.length - 1];
    fill($("cards"),
      card("members up (this node's view)", up + " / " + ms.length, up < ms.length ? "bad" : "", "up"),
      card("hints held here", fmt(ho.pending_total, 0), ho.pending_total > 0 ? "warn" : "", "hints"),
      card("reads / s", fmt(recent((s) => s.rps.read)), "", "reads"),
      card("writes / s", fmt(recent((s) => s.rps.write)), "", "writes"),
      card("p99 write (ms)", fmt(last ? last.p99_ms.write : null), "", "p99w"),
      card("503s / s", fmt(recent((s) => s.unavailable_per_s)), recent((s) => s.unavailable_per_s) > 0 ? "bad" : "", "503"));
    const rows = ms.map((m) => {
      const live = m.liveness || {};
      const isUp = !!live.up;
      const pend = (ho.pending || {})[m.id];
      const downFor = !isUp && live.since_s !== undefined ? " for " + fmt(live.since_s, 0) + " s" : "";
      return h("tr", {"data-member": m.id, "data-up": String(isUp)},
        h("td", {}, h("span", {class: "sw", style: "background:" + colorOf(m.id)}), h("b", {text: m.id}),
          live.self ? h("span", {class: "small", text: " (this node)"}) : null),
        h("td", {text: m.status}),
        h("td", {}, h("span", {class: "pill " + (isUp ? "up" : "down"), text: isUp ? "up" : "down" + downFor}),
          !isUp && live.last_error ? h("span", {class: "small", text: " " + live.last_error}) : null),
        h("td", {class: "num", "data-hints-target": m.id, text: live.self ? "–" : fmt(pend || 0, 0)}),
        h("td", {class: "num", text: live.self ? "–" : fmt((ho.delivered || {})[m.id] || 0, 0)}),
        h("td", {}, h("a", {href: location.protocol + "//" + m.http + "/ui/", text: "console"})));
    });
    fill($("members").tBodies[0], rows);
    const targets = new Set(Object.keys(ho.pending || {}));
    for (const s of S.samples) for (const t of Object.keys(s.hints_pending || {})) targets.add(t);
    const ts = Array.from(targets).sort();
    chart("chart-hints", ts.map((t) => ({label: "for " + t, stroke: colorOf(t)})),
      [xs()].concat(ts.map((t) => col((s) => (s.hints_pending || {})[t] || 0))));
    const detail = [];
    if (ho.in_progress && ho.in_progress.length) detail.push("delivering to " + ho.in_progress.join(", ") + ". ");
    for (const [t, e] of Object.entries(ho.last_error || {})) detail.push("last error to " + t + ": " + e + ". ");
    fill($("handoff-detail"), detail.join("") || (ho.pending_total ? "" : "No hints held: every write reached its primaries."));
    rpsChart("chart-ov-rps");
    latChart("chart-ov-lat");
  }

  function rpsChart(id) {
    chart(id, [{label: "reads/s", stroke: "#2454c5"}, {label: "writes/s", stroke: "#d9480f"}],
      [xs(), col((s) => s.rps.read), col((s) => s.rps.write)]);
  }

  function latChart(id) {
    chart(id, [{label: "read p50", stroke: "#2454c5", dash: [4, 3]}, {label: "read p99", stroke: "#2454c5"},
      {label: "write p50", stroke: "#d9480f", dash: [4, 3]}, {label: "write p99", stroke: "#d9480f"}],
    [xs(), col((s) => s.p50_ms.read), col((s) => s.p99_ms.read), col((s) => s.p50_ms.write),
      col((s) => s.p99_ms.write)], {points: true});  // an idle second has no latency: points show lone samples
  }

  // --- ring ------------------------------------------------------------------------------------------

  function renderRing() {
    const st = S.status;
    const r = st.ring;
    const up = upSet();
    const moving = new Map();
    for (const t of (st.membership && st.membership.transfers_pending) || []) moving.set(t.partition, t);
    const mine = new Set(r.owned);
    fill($("ring-summary"), "epoch " + r.epoch + " · " + r.partitions + " partitions · N=" + r.n_val
      + " · outlined: owned by " + st.node + " · each cell lists the partition's replicas in preference order");
    fill($("ring-legend"), members().map((m) => h("span", {class: "node-key" + (up.has(m.id) ? "" : " down")},
      h("span", {class: "sw", style: "background:" + colorOf(m.id)}),
      m.id + " (" + m.status + ", " + (up.has(m.id) ? "up" : "down") + ", owns "
      + r.owners.filter((o) => o === m.id).length + ")")));
    const cells = (r.replicas || []).map((reps, p) => {
      const t = moving.get(p);
      const title = "partition " + p + ": owner " + r.owners[p] + "; replicas " + reps.join(", ")
        + (t ? "; moving " + t.source + " \u2192 " + t.target : "");
      return h("div", {class: "part" + (mine.has(p) ? " mine" : "") + (t ? " moving" : ""), "data-partition": p, title: title},
        h("span", {class: "pn", text: "p" + p}),
        h("div", {class: "chips"}, reps.map((n) => h("span", {class: "chip" + (up.has(n) ? "" : " down"),
          style: "background:" + colorOf(n), text: n}))));
    });
    fill($("ring-grid"), cells);
    const progress = new Map();
    for (const p of (st.transfers && st.transfers.progress) || []) progress.set(p.partition, p);
    const rows = Array.from(moving.values()).map((t) => {
      const p = progress.get(t.partition);
      let prog = "streamed by " + t.target + " (see its console)";
      if (t.target === st.node) {
        prog = p ? p.streams_done + " of " + p.streams + " streams, " + fmt(p.keys, 0) + " keys" : "waiting to start";
      }
      return h("tr", {}, h("td", {text: "p" + t.partition}), h("td", {text: t.source}), h("td", {text: t.target}),
        h("td", {}, p ? h("progress", {max: p.streams, value: p.streams_done}) : null, " " + prog));
    });
    fill($("transfers").tBodies[0], rows.length ? rows : [h("tr", {}, h("td", {colspan: 4, class: "small", text: "No partition is moving."}))]);
    const done = ((st.transfers && st.transfers.completed) || []).slice(-5).reverse();
    fill($("transfers-done"), done.length ? "Received here lately: " + done.map((d) => "p" + d.partition + " from "
      + d.source + " (" + d.keys + " keys, " + d.seconds + " s)").join("; ") : "");
  }

  // --- anti-entropy ------------------------------------------------------------------------------------

  function pairClass(p, interval) {
    if (!p) return "never";
    const agreed = p.last_agreed_ago_s;
    if (p.last_failure_ago_s !== null && (agreed === null || p.last_failure_ago_s < agreed)) return "failing";
    if (agreed === null) return "never";
    if (agreed > 2 * interval + 2) return "stale";
    return p.last_differing > 0 ? "differed" : "fresh";
  }

  function renderAntiEntropy() {
    const ae = S.status.antientropy;
    if (!ae) return;
    const t = ae.totals || {};
    fill($("ae-cards"),
      card("trees built", ae.trees_built + " / " + ae.trees_total, ae.trees_built < ae.trees_total ? "warn" : "", "trees"),
      card("exchanges ok / failed", fmt(t.exchanges_ok, 0) + " / " + fmt((t.exchanges_failed || 0) + (t.exchanges_unavailable || 0), 0), "", "exchanges"),
      card("keys differing (total)", fmt(t.keys_differing, 0), "", "differing"),
      card("keys repaired here", fmt(t.keys_repaired, 0), "", "repaired"),
      card("running now", fmt((ae.running || []).length, 0), "", "running"));
    const rate = (f) => col((s) => s.dt ? f(s) / s.dt : 0);
    chart("chart-ae", [{label: "differing/s", stroke: "#e67700"}, {label: "repaired/s", stroke: "#2b8a3e"}],
      [xs(), rate((s) => s.ae.keys_differing), rate((s) => s.ae.keys_repaired)]);
    chart("chart-ae-x", [{label: "exchanges/s", stroke: "#2454c5"}], [xs(), rate((s) => s.ae.exchanges)]);
    const interval = ae.exchange_interval_s || 10;
    const parts = Object.keys(ae.partitions || {}).map(Number).sort((a, b) => a - b);
    if (!ae.enabled) { fill($("ae-grid"), h("div", {class: "small", text: "Anti-entropy is disabled on this node."})); return; }
    fill($("ae-grid"), parts.map((p) => {
      const info = ae.partitions[String(p)];
      const peers = info.peers || Object.keys(info.pairs || {});
      return h("div", {class: "ae-part", "data-partition": p},
        h("span", {class: "pn", text: "p" + p}),
        h("span", {class: "root mono", title: "Merkle root", text: info.built ? (info.root || "").slice(0, 8) : "building"}),
        peers.map((peer) => {
          const pair = (info.pairs || {})[peer];
          const cls = pairClass(pair, interval);
          let text = "no exchange yet";
          if (pair && pair.last_agreed_ago_s !== null) text = ago(pair.last_agreed_ago_s) + " · " + pair.last_differing + " diff";
          if (cls === "failing") text = (pair.last_error || "failed") + " " + ago(pair.last_failure_ago_s);
          return h("div", {class: "pair " + cls, "data-peer": peer,
            title: st_pair_title(S.status.node, peer, p, pair)},
          h("span", {text: S.status.node + "\u2194" + peer}), h("span", {text: text}));
        }));
    }));
  }

  function st_pair_title(me, peer, p, pair) {
    if (!pair) return me + " and " + peer + " have not exchanged partition " + p + " yet";
    return "partition " + p + ", " + me + " \u2194 " + peer + ": " + pair.exchanges + " exchanges seen here, "
      + pair.keys_differing + " keys differed in all, " + pair.repairs + " repaired on " + me;
  }

  // --- traffic -----------------------------------------------------------------------------------------

  function renderTraffic() {
    rpsChart("chart-rps");
    latChart("chart-lat");
    chart("chart-503", [{label: "503/s", stroke: "#c62828"}], [xs(), col((s) => s.unavailable_per_s)]);
    chart("chart-sib", [{label: "written", stroke: "#ae3ec9"}, {label: "merged", stroke: "#1098ad"}],
      [xs(), col((s) => s.siblings.written), col((s) => s.siblings.merged)]);
  }

  // --- membership --------------------------------------------------------------------------------------

  async function loadAdmin() {
    S.adminAt = Date.now();
    try {
      const [mem, plan] = await Promise.all([api("/admin/members"), api("/admin/plan")]);
      S.admin = {members: mem, plan: plan};
      S.adminError = null;
    } catch (e) {
      S.adminError = e;
    }
  }

  function renderMembership() {
    const a = S.admin;
    if (S.adminError) {
      fill($("plan"), h("div", {class: "error", text: "Cannot read the membership: " + S.adminError.message
        + (S.adminError.status === 401 || S.adminError.status === 403 ? " (an admin token is needed)" : "")}));
    }
    if (!a) return;
    const mem = a.members;
    const raft = mem.raft || {};
    fill($("mem-epoch"), "epoch " + mem.epoch);
    fill($("mem-members").tBodies[0], Object.entries(mem.members).map(([id, m]) => h("tr", {},
      h("td", {}, h("span", {class: "sw", style: "background:" + colorOf(id)}), id), h("td", {text: m.status}),
      h("td", {text: m.http}),
      h("td", {text: (mem.voters || []).includes(id) ? (raft.leader === id ? "voter, leader" : "voter") : "learner"}))));
    fill($("raft"), "Raft on this node: " + (raft.role || "?") + ", term " + raft.term + ", commit " + raft.commit
      + ", leader " + (raft.leader || "unknown") + ". Transfers pending: " + (mem.transfers_pending || []).length + ".");
    const plan = a.plan;
    const staged = plan.changes || [];
    const planEl = [];
    if (!staged.length) {
      planEl.push(h("p", {class: "small", "data-plan": "empty", text: "Nothing staged."}));
    } else {
      planEl.push(h("h3", {class: "small", text: "Staged (not yet committed):"}),
        h("ul", {"data-plan": "staged"}, staged.map((c) => h("li", {text: c.change + " " + (c.member || c.id || "")
          + (c.old ? " (replacing " + c.old + ")" : "")}))));
      const moves = plan.moves || {};
      planEl.push(h("p", {text: "On commit, " + plan.partitions_moving + " partition(s) move:"}),
        h("pre", {class: "mono", text: JSON.stringify(moves, null, 1)}));
      if ((plan.errors || []).length) {
        planEl.push(h("ul", {class: "error"}, plan.errors.map((e) => h("li", {text: e}))));
      }
    }
    fill($("plan"), planEl);
    $("plan-commit").disabled = !staged.length || (plan.errors || []).length > 0;
    $("plan-clear").disabled = !staged.length;
  }

  async function adminAction(op) {
    const label = op === "commit" ? "Commit the staged changes? Partitions start moving." : "Clear the staged changes?";
    if (!window.confirm(label)) return;
    const out = $("plan-result");
    try {
      const res = await api("/admin/" + op, {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
      fill(out, h("span", {class: "ok", text: op + " done: epoch " + res.epoch}));
    } catch (e) {
      fill(out, h("span", {class: "error", text: op + " refused: " + e.message
        + (e.status === 401 || e.status === 403 ? " (an admin token is needed)" : "")}));
    }
    await loadAdmin();
    render();
  }

  // --- key inspector ---------------------------------------------------------------------------------

  async function inspect(key) {
    const out = $("inspect-result");
    if (!key) { fill(out); return; }
    let doc;
    try {
      doc = await api("/debug/kv/" + encodeURIComponent(key));
    } catch (e) {
      fill(out, h("p", {class: "error", text: "Cannot inspect " + JSON.stringify(key) + ": " + e.message}));
      return;
    }
    if ($("inspect-key").value !== key) return;  // another key was asked for meanwhile
    fill(out, inspectView(doc));
  }

  function dotChip(s, extra) {
    return h("span", {class: "dot" + (s.tombstone ? " tomb" : "") + (extra || ""), "data-dot": s.dot[0] + ":" + s.dot[1],
      title: "actor " + s.actor + ", counter " + s.dot[1] + ", coordinated by " + s.coordinator},
    s.dot[0] + ":" + s.dot[1]);
  }

  function siblingsView(rec) {
    if (!rec) return h("span", {class: "small", text: "no record"});
    return h("div", {},
      h("div", {class: "small mono", text: "clock " + Object.entries(rec.clock).map(([a, c]) => a + ":" + c).join(" ")
        + (rec.local_actor ? " · local actor " + rec.local_actor : "") + " · digest " + (rec.digest || "").slice(0, 12)}),
      rec.siblings.map((s) => h("div", {class: "sib"}, dotChip(s),
        h("span", {class: "meta", text: " via " + s.coordinator + " at " + new Date(s.timestamp_ms).toISOString()
          + (s.tombstone ? " · tombstone" : " · " + s.content_type + ", " + s.size + " bytes ")}),
        s.tombstone ? null : h("span", {class: "preview", text: (s.preview_encoding === "base64" ? "base64:" : "")
          + s.preview + (s.truncated ? "…" : "")}))));
  }

  function inspectView(doc) {
    const up = upSet();
    const pl = doc.preference_list;
    const nodes = (list) => list.map((n) => h("span", {class: "node-key" + (up.has(n) ? "" : " down")},
      h("span", {class: "sw", style: "background:" + colorOf(n)}), n + " ")) ;
    const merged = doc.merged;
    return [
      h("dl", {class: "kv"},
        h("dt", {text: "key"}), h("dd", {class: "mono", text: doc.key}),
        h("dt", {text: "partition · Merkle leaf"}), h("dd", {text: "partition " + doc.partition + " · segment " + doc.segment}),
        h("dt", {text: "primaries"}), h("dd", {}, nodes(pl.primaries)),
        h("dt", {text: "fallbacks"}), h("dd", {}, nodes(pl.fallbacks)),
        h("dt", {text: "primaries agree"}), h("dd", {"data-agree": String(doc.primaries_agree)},
          h("span", {class: "pill " + (doc.primaries_agree ? "up" : "down"), text: doc.primaries_agree ? "yes" : "no"})),
        h("dt", {text: "merged version"}), h("dd", {}, merged ? [merged.live + " live, " + merged.tombstones + " tombstone(s): ",
          merged.siblings.map((s) => dotChip(s))] : "none")),
      h("h3", {class: "small", text: "Why"}),
      h("ul", {class: "explain", id: "inspect-explain"}, doc.explanation.map((line) => h("li", {text: line}))),
      h("table", {class: "grid-table", id: "inspect-copies"},
        h("thead", {}, h("tr", {}, ["node", "role", "copy", "version set (siblings with their dots)", "lacks", "Merkle leaf"]
          .map((t) => h("th", {text: t})))),
        h("tbody", {}, doc.copies.map((c) => h("tr", {"data-node": c.node, "data-kind": c.kind},
          h("td", {}, h("span", {class: "sw", style: "background:" + colorOf(c.node)}), h("b", {text: c.node}), " ",
            h("span", {class: "pill " + (c.up ? "up" : "down"), text: c.up ? "up" : "down"})),
          h("td", {text: c.role}),
          h("td", {text: c.kind === "hint" ? "hint for " + c.target : "data"}),
          h("td", {}, c.error ? h("span", {class: "error", text: c.error}) : siblingsView(c.record)),
          h("td", {}, (c.missing || []).map((d) => h("span", {class: "dot missing", text: d})),
            c.current ? h("span", {class: "small", text: "current"}) : null),
          h("td", {class: "mono small", text: c.kind === "data" ? (c.leaf ? c.leaf.slice(0, 12) : "–") : ""}))))),
      h("p", {class: "small", text: "Asked by " + doc.asked_by + "; each node's own stored copy (no quorum, no repair)."}),
    ];
  }

  function setupInspector() {
    $("inspect-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("inspect-key").value;
      location.hash = "#inspect/" + encodeURIComponent(key);
    });
  }

  // --- tabs and rendering -----------------------------------------------------------------------------

  const RENDER = {overview: renderOverview, ring: renderRing, antientropy: renderAntiEntropy, traffic: renderTraffic,
    membership: renderMembership, inspect: () => {}};

  function render() {
    renderHeader();
    if (!S.status) return;
    try {
      RENDER[S.tab]();
    } catch (e) {
      showBanner("Console error: " + e.message);
      throw e;
    }
  }

  function route() {
    const hash = location.hash.replace(/^#/, "");
    const [tab, ...rest] = hash.split("/");
    S.tab = RENDER[tab] ? tab : "overview";
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === S.tab);
    for (const sec of document.querySelectorAll("main > section")) sec.hidden = sec.id !== "tab-" + S.tab;
    for (const [id, c] of Object.entries(S.charts)) {  // charts of hidden tabs are rebuilt when shown (sizes)
      const el = $(id);
      if (el && el.offsetParent === null) { c.u.destroy(); delete S.charts[id]; }
    }
    if (S.tab === "membership") { S.adminAt = 0; poll(); return; }
    if (S.tab === "inspect") {
      const key = decodeURIComponent(rest.join("/"));
      S.inspectKey = key;
      if (key && $("inspect-key").value !== key) $("inspect-key").value = key;
      inspect(key);
    }
    render();
  }

  function start() {
    setupToken();
    setupInspector();
    $("plan-commit").addEventListener("click", () => adminAction("commit"));
    $("plan-clear").addEventListener("click", () => adminAction("clear"));
    setInterval(() => {
      if (S.tab === "inspect" && $("inspect-follow").checked && S.inspectKey && !document.hidden) inspect(S.inspectKey);
    }, POLL_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
    window.addEventListener("hashchange", route);
    route();
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
