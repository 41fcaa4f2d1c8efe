/* colloquy's web chat page: plain JavaScript over the HTTP API, no build step, no CDN.
 *
 * api.js speaks to the server, render.js turns Markdown into sanitised HTML, messages.js builds
 * the bubbles; this file holds the page's state and its flows: sign-in, conversations, sending
 * (stoppable), editing and regenerating, dialogs, memory, export and deletion.
 */
(function () {
  "use strict";

  var Api = window.colloquyApi, M = window.colloquyMessages;
  var TOKEN_KEY = "colloquy.token";
  // sessionStorage key of the messages waiting to be sent again (see setPending).
  var PENDING_KEY = "colloquy.pending";
  var $ = function (id) { return document.getElementById(id); };
  var state = {
    user: null, conversations: [], current: null, messages: [], bubbles: [], busy: false,
    pending: loadPending(), refill: null, abort: null,
    features: { memory: false, deleteMe: false, exportMe: false },
    // A touch keyboard has no Shift+Enter: there Enter is a new line and the button sends.
    touch: window.matchMedia("(pointer: coarse)").matches
  };

  function showError(id, text) { $(id).textContent = text || ""; }

  var count = M.count;

  function failureText(e) {
    if (e instanceof Api.ApiError) return e.message;
    return "could not reach the server (" + (e && e.message ? e.message : e) + ")";
  }

  // -- messages waiting to be sent again -------------------------------------------------------

  /* Per conversation id, the message whose reply failed: {text, key, path, seq}. Sent again
   * unchanged, it carries the same idempotency key, so the server finishes the first attempt's
   * turn instead of storing the message twice. Kept in sessionStorage (this tab's; a reload
   * keeps it); a deleted conversation or signing out forgets it. */
  function loadPending() {
    try { return JSON.parse(sessionStorage.getItem(PENDING_KEY) || "{}") || {}; }
    catch (e) { return {}; }
  }

  function setPending(id, p) {
    if (p) state.pending[id] = p; else delete state.pending[id];
    try {
      if (!Object.keys(state.pending).length) sessionStorage.removeItem(PENDING_KEY);
      else sessionStorage.setItem(PENDING_KEY, JSON.stringify(state.pending));
    } catch (e) { /* no storage: the key lasts as long as the page */ }
  }

  function forgetPending() {
    state.pending = {};
    try { sessionStorage.removeItem(PENDING_KEY); } catch (e) { /* nothing kept */ }
  }

  /* The conversation just opened: if its newest message got no reply (the reply failed, before
   * a reload or in another tab), say so and put its text back in the box, ready to send again:
   * with the key it was sent with when this tab knows it, else as the regeneration of that
   * message (answered once either way). A draft refilled for another conversation goes. */
  function offerAgain() {
    var box = $("input"), id = state.current.id, turnBubbles = unanswered();
    if (state.refill && state.refill.conversation !== id) dropRefill();
    var mine = turnBubbles[0], p = state.pending[id];
    if (!mine || !mine.text.trim()) {
      if (p) setPending(id, null);  // answered since (by this tab before a reload, or another)
      return;
    }
    if (!p || p.text !== mine.text) {
      p = { text: mine.text, key: Api.newKey(), path: "/regenerate", seq: mine.userSeq };
      setPending(id, p);
    }
    mine.meta.textContent = (mine.meta.textContent ? mine.meta.textContent + " · " : "") +
      "no reply: send again to retry";
    if (!box.value) box.value = mine.text;
    if (box.value === mine.text) state.refill = { conversation: id, text: mine.text };
  }

  /* A turn of conversation ``id`` was answered (sent, sent again, edited or regenerated): no
   * message of it waits any more, and text put back in the box for it goes. */
  function settled(id) {
    setPending(id, null);
    dropRefill();
  }

  /* Text put back in the box for a conversation goes (unless the user changed it). */
  function dropRefill() {
    if (state.refill && $("input").value === state.refill.text) $("input").value = "";
    state.refill = null;
  }

  // -- conversations ---------------------------------------------------------------------------

  async function loadConversations() {
    state.conversations = (await Api.call("GET", "/v1/conversations?limit=500")).conversations;
    renderConversations();
  }

  function renderConversations() {
    var ul = $("conversations");
    ul.textContent = "";
    if (!state.conversations.length) ul.appendChild(M.el("li", "empty", "No conversations yet."));
    state.conversations.forEach(function (c) {
      var li = M.el("li");
      var b = M.el("button", "conversation");
      b.dataset.id = c.id;
      if (state.current && state.current.id === c.id) b.setAttribute("aria-current", "true");
      b.appendChild(M.el("span", "title", c.title || "New chat"));
      b.appendChild(M.el("span", "meta", count(c.message_count, "message") + " · " +
        new Date(c.updated_at * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" })));
      b.addEventListener("click", function () { openConversation(c.id); closeSidebar(); });
      li.appendChild(b);
      ul.appendChild(li);
    });
  }

  function showConversationHeader() {
    var c = state.current;
    $("chat-title").textContent = c ? (c.title || "New chat") : "New chat";
    $("rename-chat").hidden = !c;
    $("delete-chat").hidden = !c;
  }

  function renderSessionCost() {
    $("session-cost").textContent = M.sessionLine(state.messages);
  }

  async function openConversation(id) {
    showError("chat-error", "");
    var detail;
    try { detail = await Api.call("GET", Api.conversationPath(id)); }
    catch (e) {
      if (e.status === 404) { setPending(id, null); newChat(); return; }
      showError("chat-error", failureText(e)); return;
    }
    state.current = detail;
    history.replaceState(null, "", "#" + encodeURIComponent(id));
    var list = $("messages");
    list.textContent = "";
    state.bubbles = M.show(list, M.view(detail.messages));
    // Side calls (summaries, fact extraction, title) are billed like replies.
    state.messages = detail.messages.concat((detail.side_calls || []).map(function (s) {
      return { role: "side", usage: s.usage, cost_usd: s.cost_usd };
    }));
    renderSessionCost();
    refreshActions();
    offerAgain();
    showConversationHeader();
    renderConversations();
    scrollToEnd(true);
    $("input").focus();
  }

  function newChat() {
    dropRefill();
    state.current = null;
    state.messages = [];
    state.bubbles = [];
    history.replaceState(null, "", location.pathname);
    $("messages").textContent = "";
    renderSessionCost();
    showConversationHeader();
    renderConversations();
    $("input").focus();
  }

  function scrollToEnd(force) {
    var list = $("messages");
    if (force || list.scrollHeight - list.scrollTop - list.clientHeight < 120) {
      list.scrollTop = list.scrollHeight;
    }
  }

  // -- message actions -------------------------------------------------------------------------

  function button(b, key, label, cls, aria, onClick) {
    if (!b[key]) {
      b[key] = M.actionButton(label, cls, aria);
      b[key].addEventListener("click", function () { onClick(b); });
      b.actions.appendChild(b[key]);
    }
    return b[key];
  }

  /* Edit on the newest user message; Regenerate on the newest turn's last bubble (its reply, or
   * the user message itself when it has none: a reply that failed, seen after a reload); "What
   * the model saw" on every reply with a stored record; none of them while a turn runs. */
  function refreshActions() {
    var lastUser = null, last = state.bubbles[state.bubbles.length - 1];
    state.bubbles.forEach(function (b) {
      if (b.li.classList.contains("user")) lastUser = b;
    });
    state.bubbles.forEach(function (b) {
      var isUser = b.li.classList.contains("user");
      if (isUser) {
        button(b, "editButton", "Edit", "edit-message", "Edit your message", startEdit).hidden =
          b !== lastUser || state.busy;
        button(b, "regenerateButton", "Regenerate", "regenerate", "Answer your message again",
               regenerate).hidden = b !== last || state.busy;
      } else {
        button(b, "regenerateButton", "Regenerate", "regenerate", "Regenerate the reply",
               regenerate).hidden = b !== last || !lastUser || state.busy;
        button(b, "contextButton", "What the model saw", "show-context",
               "What the model saw for this reply", showContext).hidden = !b.hasContext || !b.replySeq;
      }
    });
  }

  /* The bubbles an edit or a regeneration replaces: the newest user message and what follows. */
  function lastTurnBubbles() {
    for (var i = state.bubbles.length - 1; i >= 0; i--) {
      if (state.bubbles[i].li.classList.contains("user")) return state.bubbles.slice(i);
    }
    return [];
  }

  /* The newest turn's bubbles if no reply answered it (none, or only failed ones), else []. */
  function unanswered() {
    var turnBubbles = lastTurnBubbles();
    var answered = turnBubbles.slice(1).some(function (b) { return !b.li.classList.contains("failed"); });
    return answered ? [] : turnBubbles;
  }

  function startEdit(b) {
    if (state.busy) return;
    var form = M.el("form", "edit-form");
    var area = M.el("textarea", "edit-input");
    area.value = b.text;
    area.setAttribute("aria-label", "Edit your message");
    area.rows = Math.min(10, Math.max(2, b.text.split("\n").length));
    var save = M.el("button", "primary small", "Send");
    save.type = "submit";
    var cancel = M.el("button", "small", "Cancel");
    cancel.type = "button";
    var row = M.el("div", "edit-buttons");
    row.appendChild(cancel); row.appendChild(save);
    form.appendChild(area); form.appendChild(row);
    b.body.hidden = true;
    b.li.insertBefore(form, b.body);
    b.li.classList.add("editing");
    function close() {
      form.remove(); b.body.hidden = false; b.li.classList.remove("editing"); b.closeEdit = null;
    }
    b.closeEdit = close;
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") { ev.preventDefault(); close(); }
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var text = area.value;
      if (!text.trim()) return;
      close();
      // The message meant (seq): if another was sent since (another tab or device), the
      // server refuses (409 edit_conflict) instead of replacing that one.
      var body = { content: text, idempotency_key: Api.newKey() };
      if (b.userSeq) body.seq = b.userSeq;
      turn("/edit", body, text, lastTurnBubbles(), "edit").catch(function (e) {
        if (conflicted(e)) return;
        startEdit(b); b.li.querySelector(".edit-input").value = text;
      });
    });
    area.focus();
  }

  function regenerate(b) {
    var replaced = lastTurnBubbles();
    if (state.busy || !replaced.length) return;
    var body = { idempotency_key: Api.newKey() };
    if (b && b.replySeq) body.seq = b.replySeq;  // the reply meant (see startEdit)
    turn("/regenerate", body, replaced[0].text, replaced, "regenerate")
      .catch(conflicted);  // else said on the page
  }

  /* An edit or a regeneration refused because the conversation moved on meanwhile (another
   * tab or device): show it as stored now, keeping the error in view. */
  function conflicted(e) {
    if (!(e instanceof Api.ApiError) || e.type !== "edit_conflict" || !state.current) return false;
    openConversation(state.current.id).then(function () {
      showError("chat-error", failureText(e));
    }).catch(function () {});
    return true;
  }

  async function showContext(b) {
    var dialog = $("context-dialog"), body = $("context-body");
    body.textContent = "Loading…";
    $("context-title").textContent = "What the model saw for this reply";
    dialog.showModal();
    try {
      var seen = await Api.call("GET", Api.conversationPath(state.current.id,
                                "/messages/" + b.replySeq + "/context"));
      body.textContent = "";
      body.appendChild(M.seenPanel(seen));
    } catch (e) { body.textContent = failureText(e); }
  }

  // -- turns -------------------------------------------------------------------------------------

  function setBusy(busy) {
    state.busy = busy;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    refreshActions();
  }

  /* Put replaced bubbles into a collapsed "earlier version", where they were; without a
   * revision (the unanswered message sent again: the server stores it once) they just go. */
  function collapse(replaced, revision) {
    if (!replaced.length) return;
    if (!revision) {
      replaced.forEach(function (b) { b.li.remove(); });
      state.bubbles = state.bubbles.filter(function (b) { return replaced.indexOf(b) < 0; });
      return;
    }
    var li = M.el("li", "earlier");
    var d = M.el("details");
    d.appendChild(M.el("summary", null, "Earlier version (" +
                       (revision === "regenerate" ? "regenerated" : "edited") + ")"));
    var ol = M.el("ol", "messages nested");
    replaced[0].li.before(li);
    replaced.forEach(function (b) { b.li.hidden = false; ol.appendChild(b.li); });
    d.appendChild(ol);
    li.appendChild(d);
    state.bubbles = state.bubbles.filter(function (b) { return replaced.indexOf(b) < 0; });
  }

  /* One turn, streamed: a new message (path "/messages"), an edit or a regeneration. The
   * bubbles appear at once; if the server refuses the request before the turn begins (413,
   * 422, 429, the network), they go again, ``replaced`` bubbles come back, and the error says
   * why (the returned promise rejects). Stop aborts the request: the server stops the model
   * and stores the reply so far, which is then shown as stored. ``resend``: a message sent
   * from the box (a failure puts its text back there, to send again). */
  async function turn(path, body, userText, replaced, revision, resend) {
    // An edit box left open names a message this turn is about to make stale: close it.
    state.bubbles.forEach(function (b) { if (b.closeEdit) b.closeEdit(); });
    showError("chat-error", "");
    setBusy(true);
    var controller = new AbortController();
    state.abort = controller;
    var list = $("messages");
    replaced.forEach(function (b) { b.li.hidden = true; });
    var mine = M.bubble("user");
    M.setText(mine, userText);
    if (revision) mine.meta.textContent = revision === "edit" ? "edited" : "regenerated";
    var answer = M.bubble("assistant");
    answer.li.classList.add("streaming");
    list.appendChild(mine.li);
    list.appendChild(answer.li);
    scrollToEnd(true);
    var started = false, sofar = "", frame = 0, thinking = null, result = null, reload = false;
    var stopped = false;
    function paint() { frame = 0; M.setText(answer, sofar); scrollToEnd(false); }
    function begin() {
      if (started) return;
      started = true;
      collapse(replaced, revision);
      state.bubbles.push(mine, answer);
    }
    try {
      await Api.stream(Api.conversationPath(state.current.id, path), body, function (event, data) {
        begin();
        if (event === "delta") {
          sofar += data.text;
          if (!frame) frame = requestAnimationFrame(paint);
        } else if (event === "thinking") {
          if (!thinking) { thinking = M.thinkingBlock(""); answer.blocks.appendChild(thinking); }
          thinking._set(thinking._text + (data.thinking || data.text || ""));
        } else if (event === "done") {
          result = data;
          if (frame) { cancelAnimationFrame(frame); frame = 0; }
          M.setText(answer, data.text);
          answer.meta.textContent = M.usageLine(data.usage, data.cost_usd, data.stop_reason,
                                                data.blocked);
          answer.replySeq = data.seq;
          if (data.rounds === 1) mine.userSeq = data.seq - 1;  // else: reloaded from the log
          answer.hasContext = true;
          state.messages.push({ role: "assistant", usage: data.usage, cost_usd: data.cost_usd,
                                blocked: data.blocked });
          renderSessionCost();
          reload = data.rounds > 1;  // tool calls: shown from the stored log
        } else if (event === "error") {
          answer.li.classList.add("failed");
          answer.meta.textContent = "failed: " + data.error.message +
            (resend ? " (your message is saved; send again to retry)" : "");
        }
      }, controller.signal);
    } catch (e) {
      if (frame) { cancelAnimationFrame(frame); frame = 0; }
      if (e && e.name === "AbortError") {
        begin();
        stopped = reload = true;  // the server stores what was generated: show it as stored
        answer.meta.textContent = "stopped";
      } else if (!started) {
        mine.li.remove(); answer.li.remove();
        replaced.forEach(function (b) { b.li.hidden = false; });
        showError("chat-error", failureText(e));
        throw e;
      } else {
        answer.li.classList.add("failed");
        answer.meta.textContent = "failed: " + failureText(e);
      }
    } finally {
      answer.li.classList.remove("streaming");
      state.abort = null;
      setBusy(false);
      // A message whose reply failed is stored: its text comes back at once, with the failure,
      // ready to send again (send() keeps its key).
      var box = $("input");
      if (resend && started && !result && !stopped && !box.value) {
        box.value = userText;
        state.refill = { conversation: state.current.id, text: userText };
      }
      box.focus();
    }
    if (result || stopped) settled(state.current.id);
    if (reload) await afterStop(result);
    await loadConversations().catch(function () {});
    var fresh = state.conversations.filter(function (c) { return c.id === state.current.id; })[0];
    if (fresh) { state.current.title = fresh.title; showConversationHeader(); }
    return { reply: result, stopped: stopped };
  }

  /* After a stop (or a turn with tool calls): show the conversation as the server stored it.
   * A stopped turn is stored once the server has cut the model call: wait a little for it. */
  async function afterStop(result) {
    var id = state.current.id;
    for (var i = 0; i < 20; i++) {
      var detail = await Api.call("GET", Api.conversationPath(id)).catch(function () { return null; });
      var last = detail && detail.messages[detail.messages.length - 1];
      if (result || (last && last.role === "assistant")) break;
      await new Promise(function (r) { setTimeout(r, 150); });
    }
    if (state.current && state.current.id === id) await openConversation(id);
  }

  async function send() {
    var input = $("input");
    var text = input.value;
    if (!text.trim() || state.busy) return;
    showError("chat-error", "");
    try {
      if (!state.current) {
        var conv = await Api.call("POST", "/v1/conversations", {});
        state.current = Object.assign(conv, { messages: [] });
        state.messages = [];
        history.replaceState(null, "", "#" + encodeURIComponent(conv.id));
        showConversationHeader();
      }
    } catch (e) { showError("chat-error", failureText(e)); return; }
    // The message's key: the unanswered message sent again keeps the key it was sent with
    // (or, its key unknown here, is answered by regenerating it: see offerAgain).
    var id = state.current.id, p = state.pending[id], again = [];
    if (!p || p.text !== text) {
      p = { text: text, key: Api.newKey(), path: "/messages" };
      setPending(id, p);
    } else {
      // Sent again: its stored message and failed reply are replaced, if they are the newest
      // turn (a send refused before anything was stored has none; an older message left
      // unanswered stays).
      again = unanswered();
      if (!again.length || again[0].text !== text) again = [];
    }
    input.value = "";
    state.refill = null;
    var regen = p.path === "/regenerate";
    var body = regen ? { idempotency_key: p.key, seq: p.seq } : { content: text, idempotency_key: p.key };
    try {
      await turn(p.path, body, text, again, regen ? "regenerate" : undefined, true);
    } catch (e) {
      if (regen && conflicted(e)) { setPending(id, null); return; }  // shown as stored now
      if (!input.value) input.value = text;  // refused: nothing stored, the text is back
    }
  }

  function stop() { if (state.abort) state.abort.abort(); }

  // -- dialogs -----------------------------------------------------------------------------------

  function renameChat() {
    if (!state.current) return;
    $("rename-input").value = state.current.title || "";
    $("rename-dialog").showModal();
    $("rename-input").select();
  }

  async function onRenameClose() {
    var title = $("rename-input").value.trim();
    if ($("rename-dialog").returnValue !== "save" || !title || !state.current) return;
    try {
      var c = await Api.call("PATCH", Api.conversationPath(state.current.id), { title: title.slice(0, 200) });
      state.current.title = c.title;
      showConversationHeader();
      await loadConversations();
    } catch (e) { showError("chat-error", failureText(e)); }
  }

  function deleteChat() {
    if (!state.current) return;
    var listed = state.conversations.filter(function (c) { return c.id === state.current.id; })[0];
    var n = (listed || state.current).message_count || 0;
    $("delete-chat-title").textContent = "Delete “" + (state.current.title || "New chat") + "”?";
    $("delete-chat-summary").textContent = "Its " + count(n, "message") + (n === 1 ? " is" : " are") +
      " deleted for good.";
    $("delete-chat-dialog").showModal();
  }

  async function onDeleteChatClose() {
    if ($("delete-chat-dialog").returnValue !== "delete" || !state.current) return;
    try {
      var id = state.current.id;
      await Api.call("DELETE", Api.conversationPath(id));
      setPending(id, null);
      newChat();
      await loadConversations();
    } catch (e) { showError("chat-error", failureText(e)); }
  }

  async function askDeleteData() {
    closeMenu();
    $("confirm-input").value = "";
    $("confirm-ok").disabled = true;
    var messages = state.conversations.reduce(function (n, c) { return n + c.message_count; }, 0);
    var facts = "";
    if (state.features.memory) {
      try { facts = count((await Api.call("GET", "/v1/memory")).facts.length, "remembered fact") + ", "; }
      catch (e) { facts = "your remembered facts, "; }
    }
    $("delete-summary").textContent = "This deletes, for good: your " +
      count(state.conversations.length, "conversation") + " (" + count(messages, "message") + "), " +
      facts + "and your account " + state.user + " (your token stops working).";
    $("confirm-delete").showModal();
    $("confirm-input").focus();
  }

  async function onDeleteDialogClose() {
    if ($("confirm-delete").returnValue !== "delete") return;
    try {
      var report = await Api.call("DELETE", "/v1/me");
      // The account went with the data: the token no longer works.
      history.replaceState(null, "", location.pathname);
      $("memory").hidden = true;
      signOut("All your data was deleted (" + count(report.conversations, "conversation") + ").");
    } catch (e) { showError("chat-error", failureText(e)); }
  }

  // -- memory, export ------------------------------------------------------------------------------

  async function loadFacts() {
    var facts = (await Api.call("GET", "/v1/memory")).facts;
    var ul = $("facts");
    ul.textContent = "";
    if (!facts.length) ul.appendChild(M.el("li", "empty", "Nothing remembered yet."));
    facts.forEach(function (f) {
      var li = M.el("li");
      var text = M.el("span", "fact");
      text.appendChild(M.el("strong", null, f.subject ? f.subject + ": " : ""));
      text.appendChild(document.createTextNode(f.statement));
      var forget = M.el("button", "small", "Forget");
      forget.setAttribute("aria-label", "Forget: " + f.statement);
      forget.addEventListener("click", async function () {
        try { await Api.call("DELETE", "/v1/memory/" + encodeURIComponent(f.id)); await loadFacts(); }
        catch (e) { showError("chat-error", failureText(e)); }
      });
      li.appendChild(text); li.appendChild(forget);
      ul.appendChild(li);
    });
  }

  function toggleMemory(show) {
    closeMenu();
    $("memory").hidden = !show;
    if (show) loadFacts().catch(function (e) { showError("chat-error", failureText(e)); });
  }

  async function exportData() {
    closeMenu();
    try {
      var url = URL.createObjectURL(await Api.download("/v1/me/export"));
      var a = M.el("a");
      a.href = url;
      a.download = "colloquy-" + state.user + ".json";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    } catch (e) { showError("chat-error", "export failed: " + failureText(e)); }
  }

  // -- sign in and out ---------------------------------------------------------------------------

  async function detectFeatures() {
    try {
      var doc = await (await fetch("/openapi.json")).json();
      state.features.memory = !!doc.paths["/v1/memory"];
      state.features.deleteMe = !!(doc.paths["/v1/me"] && doc.paths["/v1/me"]["delete"]);
      state.features.exportMe = !!doc.paths["/v1/me/export"];
    } catch (e) { /* optional features stay hidden */ }
    $("show-memory").hidden = !state.features.memory;
    $("delete-data").hidden = !state.features.deleteMe;
    $("export-data").hidden = !state.features.exportMe;
  }

  async function signIn(token) {
    Api.session.token = token;
    var me = await Api.call("GET", "/v1/me");
    state.user = me.user_id;
    localStorage.setItem(TOKEN_KEY, token);
    $("whoami").textContent = me.user_id;
    await detectFeatures();
    await loadConversations();
    // Show the app only once it is ready, so nothing typed early is wiped by the first render.
    $("signin").hidden = true;
    $("app").hidden = false;
    var wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted) await openConversation(wanted); else newChat();
  }

  function signOut(message) {
    closeMenu();
    localStorage.removeItem(TOKEN_KEY);
    forgetPending();  // a message waiting to be sent again is this user's
    Api.session.token = null;
    state.current = null;
    $("app").hidden = true;
    $("signin").hidden = false;
    $("token").value = "";
    showError("signin-error", message || "");
    $("token").focus();
  }

  // -- narrow screens: the sidebar drawer and the menu -------------------------------------------

  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    $("toggle-sidebar").setAttribute("aria-expanded", "false");
  }

  function closeMenu() {
    document.body.classList.remove("menu-open");
    $("menu-button").setAttribute("aria-expanded", "false");
  }

  // -- wiring ------------------------------------------------------------------------------------

  function wire() {
    Api.session.onSignedOut = signOut;
    $("input").placeholder = state.touch ? "Message" : "Message (Enter sends, Shift+Enter for a new line)";
    $("signin-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      showError("signin-error", "");
      signIn($("token").value.trim()).catch(function (e) {
        Api.session.token = null;
        showError("signin-error", e.status === 401 ? "That token was not accepted." : failureText(e));
      });
    });
    $("composer").addEventListener("submit", function (ev) { ev.preventDefault(); send(); });
    $("input").addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !state.touch) {
        ev.preventDefault();
        send();
      }
    });
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", function () { newChat(); closeSidebar(); });
    $("rename-chat").addEventListener("click", renameChat);
    $("rename-dialog").addEventListener("close", onRenameClose);
    $("delete-chat").addEventListener("click", deleteChat);
    $("delete-chat-dialog").addEventListener("close", onDeleteChatClose);
    $("signout").addEventListener("click", function () { signOut(); });
    $("show-memory").addEventListener("click", function () { toggleMemory($("memory").hidden); });
    $("close-memory").addEventListener("click", function () { toggleMemory(false); });
    $("fact-form").addEventListener("submit", async function (ev) {
      ev.preventDefault();
      try {
        await Api.call("POST", "/v1/memory", { subject: $("fact-subject").value.trim() || null,
                                               statement: $("fact-statement").value.trim() });
        $("fact-subject").value = ""; $("fact-statement").value = "";
        await loadFacts();
      } catch (e) { showError("chat-error", failureText(e)); }
    });
    $("delete-data").addEventListener("click", askDeleteData);
    $("export-data").addEventListener("click", exportData);
    $("confirm-input").addEventListener("input", function () {
      $("confirm-ok").disabled = $("confirm-input").value.trim().toLowerCase() !== "delete";
    });
    $("confirm-delete").addEventListener("close", onDeleteDialogClose);
    $("close-context").addEventListener("click", function () { $("context-dialog").close(); });
    $("toggle-sidebar").addEventListener("click", function () {
      var open = document.body.classList.toggle("sidebar-open");
      $("toggle-sidebar").setAttribute("aria-expanded", String(open));
    });
    $("menu-button").addEventListener("click", function (ev) {
      ev.stopPropagation();
      var open = document.body.classList.toggle("menu-open");
      $("menu-button").setAttribute("aria-expanded", String(open));
      if (open) $("actions").querySelector("button:not([hidden])").focus();
    });
    document.addEventListener("click", function (ev) {
      if (!$("actions").contains(ev.target)) closeMenu();
    });
    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") {
        closeSidebar(); closeMenu();
        if (!$("memory").hidden) toggleMemory(false);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wire();
    var saved = localStorage.getItem(TOKEN_KEY);
    if (!saved) { signOut(); return; }
    signIn(saved).catch(function (e) {
      if (e instanceof Api.ApiError && e.status === 401) { signOut("Sign in again."); return; }
      // Unreachable or failing (a server restarting): not a reason to forget the token, nor
      // a message waiting to be sent again. The form holds the token: sign in to retry.
      Api.session.token = null;
      $("app").hidden = true;
      $("signin").hidden = false;
      $("token").value = saved;
      showError("signin-error", failureText(e) + ": sign in to try again.");
    });
  });
})();
