"use strict";
// Re-renders the server-rendered dashboard every REFRESH_MS from the JSON API. The markup here
// must stay the same as daemon/web/dashboard.py renders (the data-* attributes are read by tests).
(() => {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "genrelay.token";
  const ACTIVE = "/v1/jobs?status=active&limit=100";
  const FINISHED = "/v1/jobs?status=completed&limit=10";
  const CAPACITY = "/v1/scheduler/available";
  const IMAGE_PATH = /\.(png|jpe?g|gif|webp|avif)$/i;
  const VIDEO_PATH = /\.(mp4|webm|mov|m4v)$/i;

  // A token given once as ?token= is kept for this tab and taken out of the address bar.
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
  const token = sessionStorage.getItem(TOKEN_KEY);

  async function getJson(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (!response.ok) {
      throw new Error(`${path.split("?")[0]} answered ${response.status}`);
    }
    return response.json();
  }

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    node.append(...children.filter((child) => child !== null));
    return node;
  }

  function utcTime(ms) {
    return ms ? new Date(ms).toISOString().slice(11, 19) + " UTC" : "";
  }

  function accountRow(entry) {
    const busy = entry.executing;
    const effective = entry.effectiveMaxJobs ?? entry.maxJobs;
    const marks = [];
    if (effective < entry.maxJobs) {
      marks.push(
        h(
          "span",
          { class: "mark learned", title: `concurrency 429s: ${entry.maxJobs - effective} slot(s) in use elsewhere` },
          `${effective} of ${entry.maxJobs} usable`,
        ),
      );
    }
    if (entry.cooldownUntil) {
      marks.push(h("span", { class: "mark cooldown", title: "until " + utcTime(entry.cooldownUntil) }, "cooling down"));
    }
    if (!entry.enabled) {
      marks.push(h("span", { class: "mark disabled", title: entry.disabledReason || "" }, "disabled"));
    }
    if (entry.requestBudget) {
      const units = { minute: "min", hour: "h", day: "day" };
      const text = Object.entries(entry.requestBudget)
        .map(([window, use]) => `${use.used}/${use.limit} ${units[window] ?? window}`)
        .join(", ");
      marks.push(
        h("span", { class: "mark budget", title: "requests the request budget counted, of the provider's limits" }, text),
      );
    }
    return h(
      "div",
      {
        class: "account",
        "data-provider": entry.provider,
        "data-account": entry.email,
        "data-busy": busy,
        "data-max": entry.maxJobs,
        "data-effective": effective,
        "data-cooldown": entry.cooldownUntil ? 1 : 0,
        "data-disabled": entry.enabled ? 0 : 1,
      },
      h("span", { class: "name" }, entry.email),
      h("progress", { max: Math.max(entry.maxJobs, 1), value: busy }),
      h("span", { class: "count" }, `${busy} / ${entry.maxJobs}`),
      ...marks,
    );
  }

  function renderAccounts(capacity) {
    const providers = new Map();
    for (const entry of capacity.available) {
      if (!providers.has(entry.provider)) providers.set(entry.provider, []);
      providers.get(entry.provider).push(entry);
    }
    if (providers.size === 0) return [h("p", { class: "empty" }, "No accounts configured.")];
    return [...providers].map(([provider, entries]) => {
      const waiting = entries[0].waiting;
      return h(
        "div",
        { class: "provider", "data-provider": provider },
        h("h3", {}, provider + " ", h("span", { class: "queue", "data-queue": waiting }, `${waiting} waiting`)),
        ...entries.map(accountRow),
      );
    });
  }

  function activeRow(job, elapsed) {
    const progress = job.status.progress;
    return h(
      "li",
      { class: "job", "data-job": job.jobId, "data-state": job.status.type, "data-progress": progress },
      h("span", { class: "id" }, job.jobId),
      h("span", { class: "meta" }, `${job.account || "-"} · ${job.operation}`),
      h("progress", { max: 100, value: progress }),
      h("span", { class: "pct" }, `${progress}%`),
      h("span", { class: "elapsed" }, elapsed),
    );
  }

  function elapsedSince(ms) {
    const seconds = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    const pad = (n) => String(n).padStart(2, "0");
    return `${pad(Math.floor(seconds / 60))}:${pad(seconds % 60)}`;
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed : null;
    } catch {
      return null;
    }
  }

  function artifactLink(artifact) {
    const url = artifact ? safeUrl(artifact.assetUrl) : null;
    if (!url) return h("span", { class: "artifact none" }, "no artifact");
    const kind = artifact.kind || "";
    // Our archived copy (the provider's URL while the copy is not done yet). A link cannot carry
    // the bearer token, so with tokens the provider's URL is linked.
    const href = !token && /^[a-z][a-z0-9]*-asset-[0-9a-f]{32}$/.test(artifact.assetId || "")
      ? `/v1/assets/${artifact.assetId}/content?fallback=provider`
      : artifact.assetUrl;
    let content;
    if (kind.startsWith("image") || IMAGE_PATH.test(url.pathname)) {
      content = h("img", { class: "thumb", src: href, alt: kind || "image", loading: "lazy" });
    } else if (kind === "video" || VIDEO_PATH.test(url.pathname)) {
      content = "▶ video";
    } else {
      content = "⬇ " + (kind || "file");
    }
    return h(
      "a",
      { class: "artifact", "data-kind": kind, href, target: "_blank", rel: "noopener noreferrer" },
      content,
    );
  }

  function finishedRow(job) {
    return h(
      "li",
      { class: "job", "data-job": job.jobId, "data-state": job.status.type },
      artifactLink(job.status.artifact),
      h("span", { class: "id" }, job.jobId),
      h("span", { class: "meta" }, `${job.account || "-"} · ${job.operation} · ${utcTime(job.finishedAt)}`),
    );
  }

  function render(capacity, active, finished) {
    const elapsed = new Map(capacity.executing.map((entry) => [entry.jobId, entry.elapsed]));
    document.getElementById("accounts").replaceChildren(...renderAccounts(capacity));
    document.getElementById("active-count").textContent = String(active.meta.totalItems);
    document.getElementById("active-jobs").replaceChildren(
      ...active.items.map((job) =>
        activeRow(job, elapsed.get(job.jobId) || elapsedSince(job.startedAt || job.submittedAt || job.createdAt)),
      ),
    );
    document.getElementById("finished-jobs").replaceChildren(...finished.items.map(finishedRow));
  }

  function setStatus(state, text) {
    const status = document.getElementById("status");
    status.dataset.status = state;
    status.textContent = text;
  }

  async function refresh() {
    try {
      const [capacity, active, finished] = await Promise.all([getJson(CAPACITY), getJson(ACTIVE), getJson(FINISHED)]);
      render(capacity, active, finished);
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
      setStatus("live", "live, updated " + utcTime(Date.now()));
    } catch (error) {
      setStatus("error", "refresh failed: " + error.message);
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
