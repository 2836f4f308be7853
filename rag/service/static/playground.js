// The ragops playground: ask the served stack, watch the answer stream in, open its sources, rate it.
//
// Plain browser JavaScript, no build step and no dependencies. The answer streams from POST /v1/query with
// {"stream": true}: server-sent events `delta` (text to append: sentences or LLM tokens), `notice`, then
// `citations` and `done` (the full response, with request_id, stack and timings), or `blocked` (a guardrail
// refused the request: the refusal replaces whatever was shown). EventSource cannot POST, so the stream is read from fetch()'s
// body. Everything from the server is inserted as text (never as HTML): chunk texts are arbitrary documents.
// Every API call carries the API key as a bearer token. The page asks for the key once and keeps it in
// sessionStorage (this tab only, gone when it closes); a 401 forgets it and asks again. A service with auth
// switched off (loopback only) never answers 401, so the page never asks.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("ask-form");
  const question = $("question");
  const askButton = $("ask-button");
  const errorBox = $("error");
  const result = $("result");
  const answer = $("answer");
  const meta = $("meta");
  const citationList = $("citations");
  const noCitations = $("no-citations");
  const feedback = $("feedback");
  const comment = $("comment");
  const feedbackStatus = $("feedback-status");
  const rateButtons = [$("thumbs-up"), $("thumbs-down")];
  const stackInfo = $("stack-info");
  const keyForm = $("key-form");
  const keyInput = $("api-key");
  const KEY_ITEM = "ragops.key";

  let current = null; // {requestId, controller} of the question being answered or last answered

  /** The message of the service's error envelope {"error": {"message"}}, or the HTTP status. */
  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      // not JSON: fall through
    }
    return `The service answered ${response.status} ${response.statusText}`.trim();
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || "";
    } catch (_) {
      return "";
    }
  }

  function askForKey(message) {
    try {
      sessionStorage.removeItem(KEY_ITEM);
    } catch (_) {
      // storage unavailable: the key is asked for again next time
    }
    keyForm.hidden = false;
    if (message) showError(message);
    keyInput.focus();
  }

  /** fetch() with the API key; a 401 forgets the key and shows the key form again. */
  async function api(url, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = storedKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(url, { ...options, headers });
    if (response.status === 401) {
      // no key yet: just show the form; a key that stopped working (expired, revoked) says why
      askForKey(key ? `Please enter a valid API key: ${await errorMessage(response.clone())}` : "");
    }
    return response;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  /** Yields {event, data} for each server-sent event of a fetch() response body. */
  async function* readEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
      if (done) return;
    }
  }

  async function loadStack() {
    try {
      const response = await api("/v1/stack", { headers: { Accept: "application/json" } });
      if (response.status === 401) {
        stackInfo.textContent = "An API key is needed to use this service.";
        return;
      }
      if (response.status === 403) {
        stackInfo.textContent = "Signed in. (Which stack is served is shown to operator keys.)";
        return;
      }
      if (!response.ok) {
        stackInfo.textContent = `No stack is being served: ${await errorMessage(response)}`;
        return;
      }
      const stack = await response.json();
      stackInfo.textContent =
        `Serving stack ${stack.name} (version ${stack.stack_version}) over index version ${stack.index_version}.`;
    } catch (err) {
      stackInfo.textContent = `Cannot reach the service: ${err.message}`;
    }
  }

  function resetResult() {
    answer.textContent = "";
    meta.textContent = "";
    citationList.replaceChildren();
    noCitations.hidden = true;
    feedback.disabled = true;
    comment.value = "";
    feedbackStatus.textContent = "";
    for (const button of rateButtons) button.setAttribute("aria-pressed", "false");
  }

  function appendDelta(text, className = "sentence") {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    answer.append(span);
  }

  function renderCitations(citations) {
    citationList.replaceChildren();
    noCitations.hidden = citations.length > 0;
    for (const citation of citations) {
      const item = document.createElement("li");
      item.value = citation.n;
      item.className = "citation";
      const panelId = `source-${citation.n}`;

      const label = document.createElement("span");
      label.id = `citation-${citation.n}`;
      label.className = "citation-label";
      const title = document.createElement("strong");
      title.textContent = citation.title || citation.doc_id;
      const where = document.createElement("span");
      where.className = "muted citation-doc";
      where.textContent = citation.doc_id;
      label.append(`[${citation.n}] `, title, " ", where);

      const button = document.createElement("button");
      button.type = "button";
      button.className = "source-toggle";
      button.textContent = "Show source";
      button.setAttribute("aria-expanded", "false");
      button.setAttribute("aria-controls", panelId);
      button.setAttribute("aria-describedby", label.id);

      const panel = document.createElement("div");
      panel.id = panelId;
      panel.className = "source";
      panel.hidden = true;

      button.addEventListener("click", () => toggleSource(citation, button, panel));
      item.append(label, button, panel);
      citationList.append(item);
    }
  }

  async function toggleSource(citation, button, panel) {
    const open = button.getAttribute("aria-expanded") === "true";
    if (open) {
      panel.hidden = true;
      button.setAttribute("aria-expanded", "false");
      button.textContent = "Show source";
      return;
    }
    if (!panel.dataset.loaded) {
      panel.textContent = "Loading…";
      panel.hidden = false;
      try {
        const response = await api(`/v1/sources/${encodeURIComponent(citation.chunk_id)}`);
        if (!response.ok) {
          panel.textContent = await errorMessage(response);
        } else {
          const chunk = await response.json();
          const text = document.createElement("blockquote");
          text.className = "source-text";
          text.textContent = chunk.text;
          const origin = document.createElement("p");
          origin.className = "muted source-origin";
          origin.textContent =
            `${chunk.title || chunk.doc_id} · document ${chunk.doc_id} · ${chunk.source} · ` +
            `chunk ${chunk.position + 1} · index version ${chunk.index_version}`;
          panel.replaceChildren(text, origin);
          panel.dataset.loaded = "1";
        }
      } catch (err) {
        panel.textContent = `Could not load the source: ${err.message}`;
      }
    }
    panel.hidden = false;
    button.setAttribute("aria-expanded", "true");
    button.textContent = "Hide source";
  }

  function renderMeta(done, clientMs) {
    const parts = [
      `Stack ${done.stack_name} (version ${done.stack_version})`,
      `index version ${done.index_version}`,
      `answered in ${Math.round(done.timings.total)} ms (${Math.round(clientMs)} ms round trip)`,
    ];
    if (done.abstained) parts.push("abstained");
    meta.textContent = parts.join(" · ");
    if (done.notice) meta.textContent += ` · ${done.notice}`;
  }

  async function ask(text) {
    if (current && current.controller) current.controller.abort();
    const controller = new AbortController();
    current = { requestId: null, controller };
    clearError();
    resetResult();
    result.hidden = false;
    askButton.disabled = true;
    askButton.textContent = "Answering…";
    const started = performance.now();
    try {
      const response = await api("/v1/query", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ question: text, stream: true }),
        signal: controller.signal,
      });
      if (!response.ok) {
        result.hidden = true;
        showError(await errorMessage(response));
        return;
      }
      for await (const { event, data } of readEvents(response)) {
        if (event === "delta") appendDelta(data.text);
        else if (event === "notice") appendDelta(`[${data.text}] `, "notice");
        else if (event === "citations") renderCitations(data);
        else if (event === "blocked") {
          answer.replaceChildren();
          appendDelta(data.answer, "refusal");
          renderCitations([]);
          current.requestId = data.request_id;
          renderMeta(data, performance.now() - started);
        }
        else if (event === "done") {
          current.requestId = data.request_id;
          result.dataset.requestId = data.request_id;
          renderMeta(data, performance.now() - started);
          feedback.disabled = false;
        }
      }
      if (!current.requestId) showError("The answer stream ended early; please ask again.");
    } catch (err) {
      if (err.name === "AbortError") return;
      const what = err instanceof TypeError ? "Could not reach the service" : "Could not read the answer";
      showError(`${what}: ${err.message}`);
    } finally {
      if (current && current.controller === controller) {
        current.controller = null;
        askButton.disabled = false;
        askButton.textContent = "Ask";
      }
    }
  }

  async function rate(rating, button) {
    if (!current || !current.requestId) return;
    feedbackStatus.textContent = "Sending…";
    try {
      const response = await api("/v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ request_id: current.requestId, rating, comment: comment.value.trim() || null }),
      });
      if (!response.ok) {
        feedbackStatus.textContent = `Feedback not recorded: ${await errorMessage(response)}`;
        return;
      }
      const body = await response.json();
      for (const other of rateButtons) other.setAttribute("aria-pressed", String(other === button));
      feedbackStatus.textContent = body.replaced
        ? "Thanks! Your new rating replaces the earlier one."
        : "Thanks! Your feedback was recorded.";
    } catch (err) {
      feedbackStatus.textContent = `Feedback not recorded: ${err.message}`;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text) {
      showError("Please type a question first.");
      question.focus();
      return;
    }
    ask(text);
  });

  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  for (const button of rateButtons) {
    button.addEventListener("click", () => rate(button.dataset.rating, button));
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) {
      showError("Please paste your API key first.");
      keyInput.focus();
      return;
    }
    try {
      sessionStorage.setItem(KEY_ITEM, key);
    } catch (_) {
      showError("This browser refuses session storage; the key cannot be kept.");
      return;
    }
    keyInput.value = "";
    keyForm.hidden = true;
    clearError();
    loadStack();
    question.focus();
  });

  loadStack(); // a service with auth on answers 401 without a key, which shows the key form
})();
