// Chat page: send a message to POST /api/agent, stream the NDJSON answer into the page and keep
// the header balance (#token-balance) current without a reload. No dependencies.
(function () {
  "use strict";

  const form = document.getElementById("chat-form");
  if (!form) return;
  const textarea = document.getElementById("chat-message");
  const sendButton = document.getElementById("chat-send");
  const messages = document.getElementById("messages");
  // on an older page of the conversation (0030): the link back to its newest page
  const newestPage = document.getElementById("newest-messages");
  const statusLine = document.getElementById("chat-status");
  const needTokens = document.getElementById("need-tokens");
  const conversationList = document.getElementById("conversation-list");
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');

  function setBalance(balance) {
    if (typeof balance !== "number") return;
    const el = document.getElementById("token-balance");
    if (el) {
      el.textContent = String(balance);
      el.dataset.balance = String(balance);
    }
    // the same rule as the database's alert trigger: this message took us below the threshold
    // ... but below one message's cost the "need tokens" card is the only prompt (not both)
    const alert = document.getElementById("low-balance-alert");
    const threshold = el ? Number(el.dataset.threshold || 0) : 0;
    const cost = Number(form.dataset.tokenCost || 1);
    if (alert && balance < cost) alert.hidden = true;
    if (alert && balance >= cost && balance < threshold) {
      alert.querySelector(".low-balance-count").textContent = String(balance);
      alert.hidden = false;
    }
    // say so before the next message is refused, not after
    if (needTokens && balance < cost) needTokens.hidden = false;
  }

  function addMessage(role, text) {
    const item = document.createElement("li");
    item.className = "message " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Agent";
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.append(who, body);
    messages.append(item);
    item.scrollIntoView({ block: "end" });
    return body;
  }

  function showNeedTokens(message) {
    if (!needTokens) return;
    needTokens.hidden = false;
    const strong = needTokens.querySelector("strong");
    if (strong && message) strong.textContent = message + ".";
    const link = needTokens.querySelector("a");
    if (link && form.dataset.buyUrl) link.href = form.dataset.buyUrl;
  }

  function rememberConversation(id, title) {
    if (!id || form.dataset.conversationId === id) return;
    form.dataset.conversationId = id;
    const heading = document.getElementById("chat-heading");
    if (heading) heading.textContent = title.length > 80 ? title.slice(0, 80) : title;
    const url = form.dataset.chatUrl + "?c=" + encodeURIComponent(id);
    window.history.replaceState(null, "", url);
    const empty = conversationList.querySelector(".empty");
    if (empty) empty.remove();
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = url;
    link.textContent = title.length > 80 ? title.slice(0, 80) : title;
    link.setAttribute("aria-current", "page");
    item.append(link);
    conversationList.prepend(item);
  }

  function newRequestId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return String(Date.now()) + "-" + Math.random().toString(16).slice(2);
  }

  async function readLines(response, onLine) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) onLine(JSON.parse(line));
      }
    }
    if (buffer.trim()) onLine(JSON.parse(buffer));
  }

  async function send(text) {
    const payload = { message: text, stream: true };
    if (form.dataset.conversationId) payload.conversation_id = form.dataset.conversationId;
    const response = await fetch(form.dataset.endpoint, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/x-ndjson, application/json",
        "X-CSRFToken": csrfMeta ? csrfMeta.content : "",
        "Idempotency-Key": newRequestId(),
      },
      body: JSON.stringify(payload),
    });
    const header = response.headers.get("X-Token-Balance");
    if (header !== null) setBalance(Number(header));

    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("application/x-ndjson")) {
      let body = {};
      try { body = await response.json(); } catch (e) { body = {}; }
      setBalance(body.balance);
      if (response.status === 402) {
        showNeedTokens(body.error);
        statusLine.textContent = body.error || "You need more tokens to use the agent.";
      } else if (response.status === 429) {
        statusLine.textContent = "Too many messages: wait a minute and try again. No token was charged.";
      } else if (response.status === 401) {
        statusLine.textContent = "Your session ended: log in again.";
      } else {
        statusLine.textContent = body.error || "Something went wrong (HTTP " + response.status + ").";
      }
      return "rejected";
    }

    const answer = addMessage("assistant", "");
    let failed = false;
    let warning = "";
    let cost = null;
    await readLines(response, function (line) {
      if (line.conversation_id) rememberConversation(line.conversation_id, text);
      if (typeof line.delta === "string") answer.textContent += line.delta;
      if (line.error) {
        failed = true;
        answer.parentElement.classList.add("failed");
        answer.textContent = line.error;
      }
      if (line.warning) warning = line.warning;  // stopped after part of the reply: charged
      if (typeof line.cost === "number") cost = line.cost;
      if (typeof line.balance === "number") setBalance(line.balance);
    });
    statusLine.textContent = failed ? "The agent did not answer; your tokens were returned." : warning;
    if (!failed && cost !== null) {
      // what this message cost, as the server settled it (the page shows the same on reload)
      const note = document.createElement("span");
      note.className = "muted cost";
      note.textContent = " · cost " + cost + " token" + (cost === 1 ? "" : "s");
      answer.append(note);
    }
    return failed ? "failed" : "answered";
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = textarea.value.trim();
    if (!text) return;
    sendButton.disabled = true;
    statusLine.textContent = "The agent is answering…";
    const mine = addMessage("user", text).parentElement;
    textarea.value = "";
    try {
      const outcome = await send(text);
      if (outcome === "rejected") {
        // nothing ran and nothing was charged: give the text back so it can be re-sent
        mine.remove();
        textarea.value = text;
      } else if (newestPage) {
        // sent from an older page: the exchange belongs after the newest ones, not these
        window.location.assign(newestPage.href);
      }
    } catch (error) {
      statusLine.textContent = "Network error: the message may not have been answered.";
    } finally {
      sendButton.disabled = false;
      textarea.focus();
    }
  });

  textarea.addEventListener("keydown", function (event) {
    // Enter sends, Shift+Enter starts a new line; never while an input method is composing
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    if (!sendButton.disabled) form.requestSubmit();
  });
})();
