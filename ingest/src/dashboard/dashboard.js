// The operators' dashboard. Reads /admin/v1/ops/* with the admin token kept in sessionStorage,
// refreshes every few seconds while the tab is visible, and replays dead letters on request.
// Every value from the server is written with textContent, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "loyalty.adminToken";
  const REFRESH_MS = 5000;
  const DEAD_LETTERS_SHOWN = 50;

  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat();
  const rate = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  let timer = null;
  let paused = false;
  let loading = false;
  let lastSuccess = null;

  // ---- the token ------------------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    for (const stream of Object.keys(listed)) delete listed[stream];
    stopTimer();
    $("board").hidden = true;
    $("controls").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("controls").hidden = false;
  }

  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${token()}` },
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized();
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---- small DOM helpers ----------------------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = document.createElement("td");
        td.append(cell);
        tr.append(td);
      } else if (cell && typeof cell === "object") {
        tr.append(el("td", cell.text, cell.className));
      } else {
        tr.append(el("td", cell ?? "—"));
      }
    }
    return tr;
  }

  function fill(tbody, rows, emptyText, columns) {
    tbody.replaceChildren(...rows);
    if (rows.length === 0) {
      const td = el("td", emptyText, "empty");
      td.colSpan = columns;
      const tr = document.createElement("tr");
      tr.append(td);
      tbody.append(tr);
    }
  }

  const num = (value, className) => ({
    text: value === null || value === undefined ? "—" : number.format(value),
    className: `num ${className || ""}`.trim(),
  });
  const perSecond = (value) => ({
    text: value === null || value === undefined ? "—" : rate.format(value),
    className: "num",
  });

  function ago(iso) {
    if (!iso) return "—";
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return new Date(iso).toLocaleString();
  }

  function when(iso) {
    const span = el("span", ago(iso));
    if (iso) span.title = new Date(iso).toLocaleString();
    return span;
  }

  function flash(message, kind) {
    const box = $("flash");
    box.textContent = message;
    box.className = kind;
    box.hidden = false;
  }

  // ---- rendering ------------------------------------------------------------------------------

  const byRole = (queues, stream, role) =>
    (queues || []).filter((q) => q.stream === stream && q.role === role);
  const sum = (items, field) => items.reduce((total, q) => total + (q[field] || 0), 0);
  const countOf = (statuses, status, window) => {
    const found = statuses.find((s) => s.status === status);
    return found ? found[window] : 0;
  };

  // "receipts" → "receipt" for one.
  const noun = (plural, count) => (count === 1 ? plural.replace(/s$/, "") : plural);

  // Dead letters per stream: the dead queue's depth, or as many as the listing found if that is more
  // (a listing elsewhere may hold some for a moment, and the depth misses those).
  function deadCounts(summary, listed) {
    const counts = {};
    for (const stream of ["receipts", "notifications"]) {
      const depth = summary.queues ? sum(byRole(summary.queues, stream, "dead"), "messages_ready") : null;
      const found = listed[stream].error ? 0 : listed[stream].items.length;
      counts[stream] = depth === null && found === 0 ? null : Math.max(depth || 0, found);
    }
    return counts;
  }

  function health(summary, dead) {
    const problems = [];
    const warnings = [];
    if (!summary.queues) {
      problems.push(summary.queues_error || "RabbitMQ is not reachable");
    } else {
      for (const stream of ["receipts", "notifications"]) {
        const main = byRole(summary.queues, stream, "main");
        const deadOnes = dead[stream] || 0;
        const retrying = sum(byRole(summary.queues, stream, "retry"), "messages_ready");
        const service = stream === "receipts" ? "worker" : "notifier";
        if (sum(main, "consumers") === 0) problems.push(`No ${service} is consuming ${stream}`);
        if (deadOnes > 0) problems.push(`${number.format(deadOnes)} dead ${noun(stream, deadOnes)} waiting for a replay`);
        if (retrying > 0) warnings.push(`${number.format(retrying)} ${noun(stream, retrying)} waiting to be retried`);
      }
    }
    const box = $("health");
    if (problems.length) {
      box.className = "bad";
      box.textContent = problems.concat(warnings).join(" · ");
    } else if (warnings.length) {
      box.className = "warn";
      box.textContent = warnings.join(" · ");
    } else {
      box.className = "ok";
      box.textContent = "Receipts and notifications flow: no backlog, nothing dead";
    }
  }

  function tiles(summary, dead) {
    const queues = summary.queues;
    const receiptsMain = byRole(queues, "receipts", "main")[0];
    const items = [
      ["Receipts applied, last minute", countOf(summary.receipts, "processed", "last_minute")],
      ["Receipts waiting", receiptsMain ? receiptsMain.messages_ready : null],
      ["Receipts retrying", queues ? sum(byRole(queues, "receipts", "retry"), "messages_ready") : null],
      ["Dead receipts", dead.receipts],
      ["Unmatched receipts, 24 h", countOf(summary.receipts, "unmatched", "last_day")],
      ["Messages sent, last minute", countOf(summary.notifications, "sent", "last_minute")],
      ["Notifications pending, 24 h", countOf(summary.notifications, "pending", "last_day")],
      ["Dead notifications", dead.notifications],
    ];
    if (receiptsMain && receiptsMain.publish_rate !== null && receiptsMain.publish_rate !== undefined) {
      items.splice(1, 0, ["Receipts in, per second", receiptsMain.publish_rate, true]);
    }
    $("tiles").replaceChildren(
      ...items.map(([label, value, isRate]) => {
        const tile = el("div", null, "tile");
        const figure = value === null || value === undefined
          ? "—" : (isRate ? rate.format(value) : number.format(value));
        const alarming = /Dead|retrying/.test(label) && value > 0;
        tile.append(el("strong", figure, alarming ? "alarm" : ""), el("span", label));
        tile.dataset.label = label;
        return tile;
      }),
    );
  }

  function queueTable(summary) {
    $("queues-hint").textContent = summary.management
      ? "Unacked and rates from RabbitMQ's management plugin (recent averages)."
      : summary.queues
        ? "Unacked and rates need RABBITMQ_MANAGEMENT_URL (the management plugin); depths and consumers come from AMQP."
        : "";
    const rows = (summary.queues || []).map((q) => {
      const tr = row([
        q.name,
        q.role,
        num(q.messages_ready, q.role === "dead" && q.messages_ready > 0 ? "alarm" : ""),
        num(q.messages_unacknowledged),
        num(q.consumers, q.role === "main" && q.consumers === 0 ? "alarm" : ""),
        perSecond(q.publish_rate),
        perSecond(q.ack_rate),
      ]);
      tr.dataset.queue = q.name;
      return tr;
    });
    fill($("queues").tBodies[0], rows, summary.queues_error || "No queues", 7);
  }

  function statusTable(table, statuses) {
    const rows = statuses.map((s) => {
      const tr = row([s.status, num(s.last_minute), num(s.last_hour), num(s.last_day)]);
      tr.dataset.status = s.status;
      if (["dead", "retrying", "uncertain"].includes(s.status) && s.last_day > 0) tr.className = "alarm";
      return tr;
    });
    fill(table.tBodies[0], rows, "Nothing yet", 4);
  }

  function failures(summary) {
    fill(
      $("failed-receipts").tBodies[0],
      summary.failures.receipts.map((r) =>
        row([when(r.updated_at), r.org_id, r.event_id, r.receipt_id, r.status, num(r.attempts), r.last_error])),
      "No failed receipts",
      7,
    );
    fill(
      $("failed-notifications").tBodies[0],
      summary.failures.notifications.map((n) =>
        row([when(n.updated_at), n.org_id, n.id, n.kind, n.trace_id, n.status, num(n.attempts), n.last_error])),
      "No failed notifications",
      8,
    );
  }

  // What a dead letter is about, in a few words (a receipt's organization and receipt id, or a
  // notification's kind and customer).
  function about(body) {
    if (!body || typeof body !== "object") return "";
    if (body.event) {
      const data = body.event.data || {};
      return `org ${body.org_id} · ${data.type || body.event.type || "event"} ${data.id || ""}`.trim();
    }
    // A notification's message carries only its outbox row; "Latest failures" shows the rest.
    if (body.outbox_id !== undefined) return `notification #${body.outbox_id}`;
    return "";
  }

  function deadLetters(container, stream, result) {
    const heading = el("h3", stream === "receipts" ? "Receipts" : "Notifications");
    if (result.error) {
      container.replaceChildren(heading, el("p", `Could not read the dead letters: ${result.error}`, "error"));
      return;
    }
    const items = result.items;
    const all = el("button", `Replay all ${stream}`, "replay-all");
    all.type = "button";
    all.disabled = items.length === 0;
    all.addEventListener("click", () => {
      if (confirm(`Replay every dead ${stream.replace(/s$/, "")} message?`)) replay(stream, null, all);
    });
    heading.append(" ", el("span", `(${number.format(items.length)}${items.length >= DEAD_LETTERS_SHOWN ? "+" : ""})`, "count"));
    const table = el("table");
    const head = document.createElement("tr");
    for (const [text, className] of [["Message id"], ["About"], ["Attempts", "num"], ["Last error"], [""]]) {
      head.append(el("th", text, className));
    }
    table.append(el("thead"));
    table.tHead.append(head);
    const tbody = el("tbody");
    table.append(tbody);
    fill(
      tbody,
      items.map((letter) => {
        const button = el("button", "Replay", "replay");
        button.type = "button";
        button.disabled = !letter.id;
        button.title = letter.id ? `Send ${letter.id} back to its queue` : "No message id: use Replay all";
        button.addEventListener("click", () => replay(stream, [letter.id], button));
        const details = el("details");
        details.append(el("summary", about(letter.body) || "message"), el("pre", JSON.stringify(letter.body, null, 2)));
        const tr = row([letter.id || "—", details, num(letter.attempts), letter.last_error, button]);
        tr.dataset.id = letter.id || "";
        return tr;
      }),
      `No dead ${stream}`,
      5,
    );
    const wrap = el("div", null, "scroll");
    wrap.append(table);
    container.replaceChildren(heading, all, wrap);
  }

  async function replay(stream, ids, button) {
    button.disabled = true;
    try {
      const body = { queue: stream };
      if (ids) body.ids = ids;
      const result = await api("/admin/v1/ops/dead-letters/replay", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const count = result.replayed.length;
      flash(
        count === 0
          ? "Nothing was replayed: the message had already left the dead-letter queue."
          : `Replayed ${count} ${stream.replace(/s$/, "")} message${count === 1 ? "" : "s"}: ${result.replayed.slice(0, 5).join(", ")}${count > 5 ? "…" : ""}`,
        count === 0 ? "warn" : "ok",
      );
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin("The token was refused.");
      flash(`Replay failed: ${error.message}`, "bad");
    }
    await load(true);
  }

  // ---- the refresh loop -----------------------------------------------------------------------

  // Listing dead letters takes each off its queue for a moment and gives it back, so the page lists
  // them only when the dead queue's depth changed since the last listing, or when asked (Refresh,
  // a replay), not at every refresh.
  const listed = {};

  async function deadLettersOf(stream, summary, fresh) {
    const depth = summary.queues ? sum(byRole(summary.queues, stream, "dead"), "messages_ready") : null;
    const last = listed[stream];
    if (depth === 0) {
      listed[stream] = { depth, result: { items: [] } };
    } else if (fresh || !last || last.depth !== depth || last.result.error) {
      let result;
      try {
        result = await api(`/admin/v1/ops/dead-letters?queue=${stream}&limit=${DEAD_LETTERS_SHOWN}`);
      } catch (error) {
        if (error instanceof Unauthorized) throw error;
        result = { error: error.message, items: [] };
      }
      listed[stream] = { depth, result };
    }
    return listed[stream].result;
  }

  // A reload asked for while one runs (a replay's) happens right after it.
  let reloadWanted = false;

  async function load(fresh = false) {
    if (!token()) return;
    if (loading) {
      reloadWanted = true;
      return;
    }
    loading = true;
    stopTimer();
    try {
      const summary = await api("/admin/v1/ops/summary");
      const [deadReceipts, deadNotifications] = await Promise.all([
        deadLettersOf("receipts", summary, fresh),
        deadLettersOf("notifications", summary, fresh),
      ]);
      showBoard();
      const dead = deadCounts(summary, { receipts: deadReceipts, notifications: deadNotifications });
      health(summary, dead);
      tiles(summary, dead);
      queueTable(summary);
      statusTable($("receipt-statuses"), summary.receipts);
      statusTable($("notification-statuses"), summary.notifications);
      failures(summary);
      deadLetters($("dead-receipts"), "receipts", deadReceipts);
      deadLetters($("dead-notifications"), "notifications", deadNotifications);
      lastSuccess = new Date();
      $("updated").textContent = `Updated ${lastSuccess.toLocaleTimeString()}`;
      $("updated").className = "";
      document.body.dataset.loaded = "true";
    } catch (error) {
      if (error instanceof Unauthorized) {
        loading = false;
        return showLogin(token() ? "The token was refused." : "");
      }
      showBoard();
      $("updated").textContent = lastSuccess
        ? `Refresh failed (${error.message}); showing ${lastSuccess.toLocaleTimeString()}`
        : `Refresh failed: ${error.message}`;
      $("updated").className = "error";
    } finally {
      loading = false;
    }
    if (reloadWanted) {
      reloadWanted = false;
      return load(true);
    }
    scheduleNext();
  }

  function stopTimer() {
    if (timer) clearTimeout(timer);
    timer = null;
  }

  function scheduleNext() {
    stopTimer();
    if (!paused && !document.hidden && token()) timer = setTimeout(load, REFRESH_MS);
  }

  // ---- wiring ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("login-error").textContent = "";
      load();
    });
    $("signout").addEventListener("click", () => showLogin(""));
    $("refresh").addEventListener("click", () => load(true));
    $("pause").addEventListener("click", () => {
      paused = !paused;
      $("pause").textContent = paused ? "Resume" : "Pause";
      if (paused) stopTimer();
      else load();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) stopTimer();
      else load();
    });
    if (token()) load();
    else showLogin("");
  });
})();
