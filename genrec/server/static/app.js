// genrec chat page: choose a user, send chat messages to /v1/chat, show the answers as cards.
// Every server-provided text is inserted with textContent, never as HTML.
"use strict";

const state = { user: null, conversation: null, busy: false };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// User data needs an API key with the read scope; it is kept for this browser tab only.
function apiKey() { return $("key").value.trim(); }

function withKey(options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  return { ...options, headers };
}

async function api(path, options = {}) {
  const response = await fetch(path, withKey(options));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const message = body.error || response.statusText;
    throw new Error(retry ? `${message} (retry in ${retry} s)` : message);
  }
  return body;
}

async function loadUsers() {
  const list = $("users");
  list.replaceChildren();
  setStatus("");
  try {
    const platforms = await api("/v1/platforms");
    for (const platform of platforms) {
      const { users } = await api(`/v1/users?platform=${encodeURIComponent(platform.name)}&limit=25`);
      for (const user of users) {
        const option = el("option");
        option.value = user;
        option.label = `${user} (${platform.name})`;
        list.appendChild(option);
      }
    }
  } catch (error) {
    setStatus(`Could not list users: ${error.message}`);
  }
}

function setStatus(text) { $("status").textContent = text || ""; }

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy || !state.user;
  $("message").disabled = !state.user;
  setStatus(busy ? "Thinking…" : "");
}

async function chooseUser(event) {
  event.preventDefault();
  const user = $("user").value.trim();
  if (!user) return;
  const history = $("history");
  history.replaceChildren();
  try {
    const items = await api(`/v1/users/${encodeURIComponent(user)}/history?limit=8`);
    for (const item of items.reverse()) {
      const li = el("li", null, item.title || `item ${item.item_id}`);
      li.appendChild(el("span", "muted", ` · ${item.platform}`));
      history.appendChild(li);
    }
    $("history-empty").hidden = true;
  } catch (error) {
    $("history-empty").hidden = false;
    $("history-empty").textContent = error.message;
    return;
  }
  state.user = user;
  state.conversation = null;
  const report = $("report-link");
  report.href = `/v1/users/${encodeURIComponent(user)}/report`;
  report.hidden = false;
  $("log").replaceChildren(el("p", "muted hint", `Chatting as ${user}. Ask for something.`));
  setBusy(false);
  $("message").focus();
}

// Where a pipeline's item came from: each candidate source's own score, the LLM's score and who wrote the
// rationale, e.g. "ItemKNN 0.42 · popularity 12 · LLM −3.10 · rationale: LLM". Null when the answer has none.
const SOURCE_NAMES = { itemknn: "ItemKNN", sasrec: "SASRec", popularity: "popularity", content: "content" };

function score(value) {
  const text = Number.isInteger(value) ? String(value) : value.toFixed(2);
  return text.replace("-", "\u2212");
}

function provenance(item) {
  const parts = [];
  for (const [name, value] of Object.entries(item.sources || {})) {
    if (typeof value === "number") parts.push(`${SOURCE_NAMES[name] || name} ${score(value)}`);
  }
  if (typeof item.llm === "number") parts.push(`LLM ${score(item.llm)}`);
  if (item.rationale_source) parts.push(`rationale: ${item.rationale_source === "llm" ? "LLM" : item.rationale_source}`);
  if (!parts.length) return null;
  const line = el("p", "card-sources", parts.join(" \u00b7 "));
  line.title = "Each source's own score, the LLM's score, and who wrote the rationale";
  return line;
}

function card(item) {
  const node = el("article", "card");
  node.dataset.itemId = item.item_id;
  node.appendChild(el("div", "card-rank", `#${item.rank}`));
  node.appendChild(el("div", "card-title", item.title));
  node.appendChild(el("span", "card-platform", item.platform));
  const sources = provenance(item);
  if (sources) node.appendChild(sources);
  node.appendChild(el("p", "card-rationale", item.rationale || ""));
  if (item.evidence && item.evidence.length) {
    const evidence = el("ul", "card-evidence");
    for (const title of item.evidence) evidence.appendChild(el("li", null, `from your history: ${title}`));
    node.appendChild(evidence);
  }
  return node;
}

async function send(event) {
  event.preventDefault();
  const message = $("message").value.trim();
  if (!message || !state.user || state.busy) return;
  const log = $("log");
  log.appendChild(el("div", "bubble user", message));
  $("message").value = "";
  setBusy(true);
  try {
    const answer = await api("/v1/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: state.user, message, conversation_id: state.conversation }),
    });
    state.conversation = answer.conversation_id;
    log.appendChild(el("div", "bubble reply", answer.reply));
    const cards = el("div", "cards");
    for (const item of answer.items) cards.appendChild(card(item));
    log.appendChild(cards);
  } catch (error) {
    log.appendChild(el("div", "bubble error", error.message));
  } finally {
    setBusy(false);
    $("message").focus();
  }
}

// The report needs the key too, so it is fetched here and opened from memory rather than linked.
async function openReport(event) {
  event.preventDefault();
  const win = window.open("", "_blank");
  try {
    const response = await fetch(event.currentTarget.href, withKey());
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
    const html = await response.text();
    win.location = URL.createObjectURL(new Blob([html], { type: "text/html" }));
  } catch (error) {
    if (win) win.close();
    setStatus(`Could not open the report: ${error.message}`);
  }
}

function keyChanged() {
  sessionStorage.setItem("genrec-key", apiKey());
  loadUsers();
}

function newConversation() {
  state.conversation = null;
  $("log").replaceChildren(el("p", "muted hint", "New conversation."));
}

document.addEventListener("DOMContentLoaded", () => {
  $("user-form").addEventListener("submit", chooseUser);
  $("message-form").addEventListener("submit", send);
  $("new-conversation").addEventListener("click", newConversation);
  $("report-link").addEventListener("click", openReport);
  $("key").addEventListener("change", keyChanged);
  $("key").value = sessionStorage.getItem("genrec-key") || "";
  if (apiKey()) loadUsers();
  else setStatus("Enter an API key with the read scope to see users.");
});
