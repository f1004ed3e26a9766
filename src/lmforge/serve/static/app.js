// lmforge web chat: plain JS, no build step. Conversations live in localStorage; answers stream
// from /v1/chat/completions (SSE) and can be stopped; under a RAG answer, the server's check of
// each sentence against the source it cites, then the sources; under every answer, thumbs up and
// down (and a correction) sent to /v1/feedback with the answer's id.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "lmforge.conversations";
const state = { conversations: load(), current: null, controller: null, feedback: false };

function load() {
  try { return JSON.parse(localStorage.getItem(STORE)) || []; } catch { return []; }
}
function save() { localStorage.setItem(STORE, JSON.stringify(state.conversations)); }

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function inline(text) {
  return escapeHtml(text)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^)\s]+)\)/g, '<a href="$2" target="_blank" rel="noopener">$1</a>')
    .replace(/\[(\d+)\]/g, '<sup class="cite">[$1]</sup>');
}

// A small markdown subset (fenced code, headings, lists, paragraphs, inline marks). Everything is
// escaped first, so model output can never inject HTML into the page.
function renderMarkdown(source) {
  const out = [];
  const lines = source.split("\n");
  let list = null, paragraph = [];
  const flush = () => {
    if (paragraph.length) out.push("<p>" + paragraph.map(inline).join("<br>") + "</p>");
    paragraph = [];
    if (list) out.push(`</${list}>`);
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      flush();
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
      out.push("<pre><code>" + escapeHtml(code.join("\n")) + "</code></pre>");
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/);
    if (heading) { flush(); out.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`); }
    else if (item) {
      const kind = item[1] ? "ul" : "ol";
      if (paragraph.length || list !== kind) { flush(); out.push(`<${kind}>`); list = kind; }
      out.push("<li>" + inline(item[3]) + "</li>");
    } else if (!line.trim()) flush();
    else { if (list) flush(); paragraph.push(line); }
  }
  flush();
  return out.join("");
}

function conversation() {
  if (!state.current) {
    state.current = { id: Date.now().toString(36), title: "New chat", messages: [] };
    state.conversations.unshift(state.current);
  }
  return state.current;
}

function renderSources(element, sources) {
  if (!sources || !sources.length) return;
  const box = document.createElement("ol");
  box.className = "sources";
  for (const s of sources) {
    const li = document.createElement("li");
    li.value = s.n;
    // location: "p. 3 · heading", "sheet 2 (name)", "slide 4 (title)" (rag/chunk.py position_label);
    // answers kept in localStorage from before it existed have page and heading only
    const location = s.location ?? [s.page ? `p. ${s.page}` : "", s.heading || ""].filter(Boolean).join(" · ");
    const where = [s.document, location].filter(Boolean).join(" · ");
    li.innerHTML = `<strong>${escapeHtml(where)}</strong>: ${escapeHtml(s.text.slice(0, 160))}${s.text.length > 160 ? "…" : ""}`;
    box.appendChild(li);
  }
  element.appendChild(box);
}

// Each answer sentence with the server's verdict (rag/citations.py: character overlap with the
// cited passages, not entailment), from the citations of the answer's last chunk.
function citationMark(c) {
  if (!c.cites.length) return ["uncited", "·", "no citation"];
  return c.supported ? ["supported", "✓", "supported"] : ["unsupported", "✗", "not supported"];
}

function renderCitations(element, citations) {
  if (!citations || !citations.length) return;
  const box = document.createElement("ul");
  box.className = "citations";
  box.setAttribute("aria-label", "Citation check");
  for (const c of citations) {
    const [kind, mark, label] = citationMark(c);
    const li = document.createElement("li");
    li.className = kind;
    li.title = c.support === null ? label : `${label}: ${Math.round(c.support * 100)}% of it is in the cited source`;
    li.innerHTML = `<span class="mark" aria-label="${label}">${mark}</span> ${inline(c.text)}`;
    box.appendChild(li);
  }
  element.appendChild(box);
}

// The agent's steps under its answer (the server's trace: each tool call with its arguments, what
// the tool returned, errors), as sources are shown under a RAG answer.
const STEP_LABELS = { tool_call: "call", observation: "result", answer: "answer", error: "error" };
function stepText(step) {
  if (step.kind === "tool_call") return `${step.tool}(${JSON.stringify(step.arguments)})`;
  if (step.kind === "observation") return `${step.tool} → ${step.error || step.result || ""}`;
  return step.refused ? `${step.tool}: ${step.error}` : step.error || step.content || "";
}

function renderTrace(element, trace) {
  if (!trace || !trace.length) return;
  const box = document.createElement("ol");
  box.className = "trace";
  box.setAttribute("aria-label", "Agent steps");
  for (const step of trace) {
    if (step.kind === "answer") continue;
    const li = document.createElement("li");
    li.className = step.kind;
    li.innerHTML = `<span class="kind">${escapeHtml(STEP_LABELS[step.kind] || step.kind)}</span> <code>${escapeHtml(stepText(step).slice(0, 240))}</code>`;
    box.appendChild(li);
  }
  element.appendChild(box);
}

// Thumbs under an answer the server can still rate: one it finished (a stopped answer was never
// whole) and that the model gave (a question moderation refused is not rated). A thumb sends at
// once; thumbs down, or "correct", opens a box for what the answer should have said.
function renderFeedback(element, message) {
  if (!state.feedback || !message.id || !message.finished || message.refused) return;
  const box = document.createElement("div");
  box.className = "feedback";
  const thumbs = [["up", "👍", "Good answer"], ["down", "👎", "Bad answer"]].map(([rating, face, label]) => {
    const button = document.createElement("button");
    button.type = "button"; button.className = `thumb ${rating}`; button.textContent = face;
    button.title = label; button.setAttribute("aria-label", label);
    button.setAttribute("aria-pressed", String(message.rating === rating));
    // a thumb down keeps a correction already given; a thumb up no longer needs it
    button.onclick = () => rate(message, box, rating, rating === "down" ? message.correction || "" : "")
      .then((ok) => { if (ok && rating === "down") form.hidden = false; });
    return button;
  });
  const correct = document.createElement("button");
  correct.type = "button"; correct.className = "correct"; correct.textContent = "correct";
  correct.onclick = () => { form.hidden = !form.hidden; };
  const status = document.createElement("span");
  status.className = "status"; status.setAttribute("role", "status");
  const form = document.createElement("form");
  form.className = "correction"; form.hidden = true;
  form.innerHTML = '<textarea rows="2" placeholder="What should the answer have said?"></textarea>' +
    '<button type="submit">Send correction</button>';
  form.querySelector("textarea").value = message.correction || "";
  form.onsubmit = (event) => {
    event.preventDefault();
    const text = form.querySelector("textarea").value.trim();
    rate(message, box, message.rating || "down", text).then((ok) => { if (ok) form.hidden = true; });
  };
  box.append(...thumbs, correct, status, form);
  element.appendChild(box);
}

async function rate(message, box, rating, correction) {
  const status = box.querySelector(".status");
  status.className = "status"; status.textContent = "";
  try {
    const response = await fetch("/v1/feedback", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeader() },
      body: JSON.stringify({ response_id: message.id, rating, correction }),
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error((problem.error && problem.error.message) || `HTTP ${response.status}`);
    }
  } catch (err) {
    status.className = "status error"; status.textContent = `Feedback not recorded: ${err.message}`;
    return false;
  }
  message.rating = rating; message.correction = correction;
  save();
  for (const thumb of box.querySelectorAll(".thumb")) {
    thumb.setAttribute("aria-pressed", String(thumb.classList.contains(rating)));
  }
  status.textContent = correction ? "Thanks: correction recorded" : "Thanks";
  return true;
}

function addMessage(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  element.innerHTML = message.role === "user" ? escapeHtml(message.content).replace(/\n/g, "<br>")
    : renderMarkdown(message.content);
  renderTrace(element, message.trace);
  renderCitations(element, message.citations);
  renderSources(element, message.sources);
  if (message.role === "assistant") renderFeedback(element, message);
  $("messages").appendChild(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

function renderAll() {
  $("messages").innerHTML = "";
  for (const m of state.current ? state.current.messages : []) addMessage(m);
  const history = $("history");
  history.innerHTML = "";
  for (const c of state.conversations) {
    const li = document.createElement("li");
    if (c === state.current) li.className = "active";
    const open = document.createElement("button");
    open.className = "open"; open.type = "button"; open.textContent = c.title;
    open.onclick = () => { if (!state.controller) { state.current = c; renderAll(); } };
    const remove = document.createElement("button");
    remove.className = "delete"; remove.type = "button"; remove.textContent = "×"; remove.title = "Delete";
    remove.onclick = () => {
      state.conversations = state.conversations.filter((x) => x !== c);
      if (state.current === c) state.current = null;
      save(); renderAll();
    };
    li.append(open, remove);
    history.appendChild(li);
  }
}

function showError(text) { $("error").hidden = !text; $("error").textContent = text || ""; }
function busy(on) { $("send").hidden = on; $("stop").hidden = !on; }

// Parse a server-sent-event body; TextDecoder's stream mode keeps a Chinese character that arrives
// split across network chunks whole.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function send(text) {
  const chat = conversation();
  if (chat.messages.length === 0) chat.title = text.slice(0, 30);
  chat.messages.push({ role: "user", content: text });
  renderAll();
  // id: the completion's, which /v1/feedback names; finished: the stream ended with a reason
  const answer = { role: "assistant", content: "", sources: null, citations: null, trace: null,
                   id: null, finished: false, refused: false };
  const element = addMessage(answer);
  element.classList.add("streaming");
  const system = $("system").value.trim();
  const body = {
    messages: (system ? [{ role: "system", content: system }] : []).concat(
      chat.messages.map(({ role, content }) => ({ role, content }))),
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
  if ($("use-agent").checked) body.agent = true;
  else if ($("use-rag").checked) body.rag = true;
  state.controller = new AbortController();
  busy(true); showError("");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeader() },
      body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error((problem.error && problem.error.message) || `HTTP ${response.status}`);
    }
    for await (const chunk of events(response)) {
      if (chunk.id) answer.id = chunk.id;
      if (chunk.moderation) answer.refused = true;  // the question was refused, not answered
      if (chunk.sources) answer.sources = chunk.sources;
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.finish_reason) answer.finished = true;
      if (choice && choice.citations) answer.citations = choice.citations;
      if (chunk.agent_step) (answer.trace = answer.trace || []).push(chunk.agent_step);
      const delta = choice && choice.delta;
      if (delta && delta.content) {
        answer.content += delta.content;
        element.innerHTML = renderMarkdown(answer.content);
        element.scrollIntoView({ block: "end" });
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    element.classList.remove("streaming");
    element.innerHTML = renderMarkdown(answer.content);
    renderTrace(element, answer.trace);
    renderCitations(element, answer.citations);
    renderSources(element, answer.sources);
    chat.messages.push(answer);
    state.controller = null;
    busy(false); save(); renderAll();
  }
}

function authHeader() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  // While an IME is composing (pinyin), Enter picks a candidate; it must not send the message.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", () => { if (!state.controller) { state.current = null; renderAll(); } });
for (const [slider, label] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
  $(slider).addEventListener("input", () => { $(label).textContent = $(slider).value; });
}
// The assistant's defaults (its trained system prompt and recipe sampling) fill the settings:
// an empty system-prompt box sends no system message, and the server puts the default in.
function showDefaults(assistant) {
  const system = assistant.system_prompt;
  $("system").placeholder = system ? `(default) ${system}` : "(none: the model's default is no system prompt)";
  const s = assistant.sampling;
  $("temperature").value = s.temperature; $("temperature-value").textContent = s.temperature;
  $("top-p").value = s.top_p; $("top-p-value").textContent = s.top_p;
  $("max-tokens").value = s.max_tokens;
}
const getJson = (path) => fetch(path, { headers: authHeader() }).then((r) => r.json());
Promise.all([getJson("/v1/models"), getJson("/v1/assistant")]).then(([m, assistant]) => {
  showDefaults(assistant);
  $("model-name").textContent = `model: ${m.data[0].id} (${assistant.name})`;
  if (!m.agent) { $("use-agent").disabled = true; $("use-agent").parentElement.title = "no agent configured"; }
  if (!m.rag) { $("use-rag").disabled = true; $("use-rag").parentElement.title = "no RAG index loaded"; }
  else $("use-rag").checked = true;
  state.feedback = Boolean(m.feedback);
  if (!state.controller) renderAll();  // the thumbs of the answers already shown
}).catch(() => {});
state.current = state.conversations[0] || null;
renderAll();
