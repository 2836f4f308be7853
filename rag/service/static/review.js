// The ragops review queue: one queued answer at a time, with its question, cited chunks and guardrail verdicts; the
// reviewer marks the relevant chunks, gives a verdict (and the right answer when it was wrong) and saves.
//
// Plain browser JavaScript, no build step and no dependencies, like the playground. GET /v1/review lists pending
// items; POST /v1/review/{request_id} records a label. Everything from the server is inserted as text (never as
// HTML). The API key (operator role) is asked for once and kept in sessionStorage, as the playground does.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_ITEM = "ragops.key";
  const keyForm = $("key-form");
  const keyInput = $("api-key");
  const errorBox = $("error");
  const info = $("queue-info");
  const empty = $("empty");
  const section = $("item");
  const form = $("label-form");
  const rightAnswer = $("right-answer");
  const status = $("label-status");
  let queue = [];
  let skipped = new Set();

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || "";
    } catch (_) {
      return "";
    }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      // not JSON
    }
    return `The service answered ${response.status}`;
  }

  async function api(url, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = storedKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(url, { ...options, headers });
    if (response.status === 401 || response.status === 403) {
      try {
        sessionStorage.removeItem(KEY_ITEM);
      } catch (_) {
        // storage unavailable
      }
      keyForm.hidden = false;
      showError(key ? `Please enter an operator key: ${await errorMessage(response.clone())}` : "");
      keyInput.focus();
    }
    return response;
  }

  function render(item, focus) {
    section.hidden = false;
    section.dataset.requestId = item.request_id;
    empty.hidden = true;
    $("question").textContent = item.question;
    $("reasons").textContent = `Queued because: ${item.reasons.join(", ").replaceAll("_", " ")}`;
    $("answer").textContent = item.blocked ? "(refused by a guardrail)" : item.answer;
    const verdicts = Object.entries(item.guardrails).map(([k, v]) => `${k}: ${v}`);
    $("guardrails").textContent = verdicts.length ? `Guardrails: ${verdicts.join("; ")}` : "";
    const list = $("citations");
    list.replaceChildren();
    for (const c of item.citations) {
      const li = document.createElement("li");
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "relevant";
      box.value = c.chunk_id;
      const title = document.createElement("strong");
      title.textContent = ` [${c.n}] ${c.title || c.doc_id} `;
      const text = document.createElement("span");
      text.textContent = c.text || "";
      label.append(box, title, text);
      li.append(label);
      list.append(li);
    }
    $("no-citations").hidden = item.citations.length > 0;
    form.reset();
    if (focus) $("verdict-correct").focus(); // after a save or a skip: straight on to the next verdict
  }

  function next(focus) {
    const item = queue.find((i) => !skipped.has(i.request_id));
    if (item) {
      render(item, focus);
    } else {
      section.hidden = true;
      empty.hidden = false;
    }
    return item;
  }

  async function load(focus = false) {
    showError("");
    const response = await api("/v1/review?status=pending&limit=100");
    if (!response.ok) {
      if (response.status !== 401 && response.status !== 403) showError(await errorMessage(response));
      info.textContent = "";
      return;
    }
    keyForm.hidden = true;
    const body = await response.json();
    queue = body.items;
    info.textContent = `${body.counts.pending} waiting, ${body.counts.labelled} labelled`;
    next(focus);
  }

  async function save(event) {
    event.preventDefault();
    const item = queue.find((i) => !skipped.has(i.request_id));
    if (!item) return;
    const chosen = form.querySelector("input[name=verdict]:checked");
    if (!chosen) {
      showError("Choose a verdict first.");
      $("verdict-correct").focus();
      return;
    }
    const relevant = [...form.querySelectorAll("input[name=relevant]:checked")].map((b) => b.value);
    const body = { verdict: chosen.value, relevant_chunk_ids: relevant };
    if (rightAnswer.value.trim()) body.right_answer = rightAnswer.value.trim();
    status.textContent = "Saving…";
    const response = await api(`/v1/review/${encodeURIComponent(item.request_id)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      status.textContent = "";
      showError(await errorMessage(response));
      return;
    }
    showError("");
    queue = queue.filter((i) => i.request_id !== item.request_id);
    await load(true);
    status.textContent = "Saved.";
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      sessionStorage.setItem(KEY_ITEM, keyInput.value.trim());
    } catch (_) {
      // storage unavailable: the key is asked for again on the next load
    }
    keyInput.value = "";
    load();
  });
  form.addEventListener("submit", save);
  rightAnswer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  $("skip-button").addEventListener("click", () => {
    const item = queue.find((i) => !skipped.has(i.request_id));
    if (item) skipped.add(item.request_id);
    next(true);
  });
  load();
})();
