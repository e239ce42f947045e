// The frameiod console: fills the page from the admin API. Every value from the queue is
// written as text (textContent), never as markup: an event's type and body come from
// whoever sent the event.
"use strict";
(() => {
  const KEY = "frameiod-admin-token";
  const REFRESH_MS = 4000;
  const STATES = ["pending", "running", "done", "dead"];
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let openId = null;

  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };
  const when = (seconds) =>
    seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "-";
  const say = (text, cls) => { $("status").textContent = text; $("status").className = cls || ""; };

  async function api(path, body) {
    const token = sessionStorage.getItem(KEY);
    const options = { headers: { Authorization: "Bearer " + token }, cache: "no-store" };
    if (body !== undefined) {
      options.method = "POST";
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const data = await response.json().catch(() => ({ error: "not_json" }));
    if (response.status === 401) { signOut("That token was refused."); throw new Error("401"); }
    if (!response.ok) throw new Error(data.detail || data.error || String(response.status));
    return data;
  }

  // A table of deliveries, a page at a time: `pages` holds the cursor each page began at.
  function Table(id, query) {
    this.body = $(id).querySelector("tbody");
    this.query = query;
    this.pages = [null];
  }
  Table.prototype.load = async function () {
    const params = new URLSearchParams(this.query());
    params.set("limit", "25");
    const cursor = this.pages[this.pages.length - 1];
    if (cursor) params.set("cursor", cursor);
    const page = await api("/api/deliveries?" + params.toString());
    this.next = page.cursor;
    const rows = page.items.map((item) => {
      const row = el("tr", null, "state-" + item.state);
      const open = el("button", item.type || "(no type)", "link");
      open.type = "button";
      open.dataset.id = item.id;
      open.addEventListener("click", () => showDelivery(item.id));
      const type = el("td");
      type.appendChild(open);
      row.append(el("td", when(item.received_at)), type, el("td", item.source),
        el("td", item.handler), el("td", item.state, "state"), el("td", item.attempts),
        el("td", item.last_error || "", "error"));
      return row;
    });
    if (!rows.length) {
      const empty = el("tr");
      empty.appendChild(el("td", "nothing here", "empty")).colSpan = 7;
      rows.push(empty);
    }
    this.body.replaceChildren(...rows);
  };
  Table.prototype.older = function () { if (this.next) { this.pages.push(this.next); this.load(); } };
  Table.prototype.newest = function () { this.pages = [null]; this.load(); };

  const dead = new Table("dead", () => ({ state: "dead" }));
  const all = new Table("deliveries", () => {
    const wanted = {};
    for (const [key, value] of new FormData($("filters"))) if (value) wanted[key] = value;
    return wanted;
  });

  function countsTable(title, rows) {
    const table = el("table", null, "counts");
    const head = el("tr");
    for (const name of [title, ...STATES]) head.appendChild(el("th", name));
    table.appendChild(head);
    for (const [name, counts] of Object.entries(rows)) {
      const row = el("tr");
      row.appendChild(el("td", name));
      for (const state of STATES) row.appendChild(el("td", counts[state], counts[state] && state === "dead" ? "dead" : ""));
      table.appendChild(row);
    }
    return table;
  }

  async function loadStats() {
    const stats = await api("/api/stats");
    const summary = el("p", null, "summary");
    for (const state of STATES) {
      summary.appendChild(el("span", state + " " + stats.deliveries[state], "pill state-" + state));
    }
    const age = stats.oldest_pending_seconds;
    summary.appendChild(el("span", "oldest due pending " + (age === null ? "-" : age.toFixed(1) + " s"), "pill"));
    $("stats-body").replaceChildren(summary, countsTable("source", stats.sources),
      countsTable("handler", stats.handlers));
  }

  async function showDelivery(id) {
    openId = id;
    const item = await api("/api/deliveries/" + encodeURIComponent(id));
    $("detail-id").textContent = item.id;
    const fields = [
      ["State", item.state], ["Handler", item.handler], ["Attempts", item.attempts],
      ["Event", item.event.id], ["Type", item.event.type], ["Source", item.event.source],
      ["Received", when(item.event.received_at)], ["Next attempt", when(item.next_attempt_at)],
      ["Last outcome", item.last_outcome || "-"], ["Updated", when(item.updated_at)],
    ];
    const list = [];
    for (const [name, value] of fields) list.push(el("dt", name), el("dd", value, name === "State" ? "state state-" + value : ""));
    $("detail-fields").replaceChildren(...list);
    $("detail-error").textContent = item.last_error || "-";
    $("detail-body").textContent = JSON.stringify(item.event.payload, null, 2);
    $("detail").hidden = false;
  }

  async function act(verb) {
    if (!openId || !window.confirm(verb + " this delivery?")) return;
    try {
      const answer = await api("/api/deliveries/" + verb.toLowerCase(), { ids: [openId] });
      const done = answer.replayed ?? answer.purged;
      const refused = (answer.refused || []).map((r) => r.reason);
      const unknown = (answer.unknown || []).length ? ["no such delivery"] : [];
      say(verb + ": " + done + " " + [...refused, ...unknown].join("; "), done ? "ok" : "error");
      if (verb === "Purge" && done) { $("detail").hidden = true; openId = null; }
    } catch (error) { say(verb + " failed: " + error.message, "error"); }
    refresh();
  }

  let refreshing = false;
  async function refresh() {
    // One refresh at a time: on a large queue a refresh can outlast the interval.
    if (refreshing) return;
    refreshing = true;
    try {
      await Promise.all([loadStats(), dead.load(), all.load(), openId ? showDelivery(openId) : null]);
      if (!$("status").classList.contains("error")) say("updated " + when(Date.now() / 1000));
    } catch (error) {
      if (error.message !== "401") say("cannot reach the API: " + error.message, "error");
    } finally {
      refreshing = false;
    }
  }

  function signIn() {
    $("sign-in").hidden = true;
    $("console").hidden = false;
    $("sign-out").hidden = false;
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    clearInterval(timer);
    $("console").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("token").value);
      $("token").value = "";
      signIn();
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); all.newest(); });
    $("older").addEventListener("click", () => all.older());
    $("newest").addEventListener("click", () => all.newest());
    $("dead-more").addEventListener("click", () => dead.older());
    $("replay").addEventListener("click", () => act("Replay"));
    $("purge").addEventListener("click", () => act("Purge"));
    $("close").addEventListener("click", () => { $("detail").hidden = true; openId = null; });
    if (sessionStorage.getItem(KEY)) signIn(); else signOut();
  });
})();
