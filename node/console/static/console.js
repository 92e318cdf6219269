// The console's few live parts (no framework; the pages work without this file).
//  - An element with data-live="URL" data-every="SECONDS" is refreshed from URL.
//  - A form with data-inline="#id" is sent in the background; the answer replaces #id's content.
//  - After a refused configuration change, the first entry in error is scrolled into view and its
//    first wrong field focused (the page may be long; the error is beside that field).
// Both ask for the page's "content" block only (header X-Console-Fragment: 1). An answer that came
// by way of a redirect is a whole page: the log-in page (the session ended) is reached by reloading,
// so that it comes back here; another is loaded.
"use strict";

const FRAGMENT = { "X-Console-Fragment": "1" };

async function fragment(url, init) {
  const response = await fetch(url, { credentials: "same-origin", ...init });
  if (response.redirected) {
    if (new URL(response.url).pathname === "/login") {
      window.location.reload();
    } else {
      window.location.assign(response.url);
    }
    return null;
  }
  return response.text();
}

function refreshEvery(element) {
  const seconds = Math.max(1, Number(element.dataset.every) || 5);
  let busy = false;
  window.setInterval(async () => {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    try {
      const html = await fragment(element.dataset.live, { headers: FRAGMENT });
      if (html !== null) {
        element.innerHTML = html;
      }
    } catch (error) {
      element.classList.add("stale");
      return;
    } finally {
      busy = false;
    }
    element.classList.remove("stale");
  }, seconds * 1000);
}

function sendInline(form) {
  form.addEventListener("submit", async (event) => {
    const target = document.querySelector(form.dataset.inline);
    if (target === null) {
      return; // posted as a plain form
    }
    event.preventDefault();
    const button = event.submitter;
    const body = new FormData(form);
    if (button && button.name) {
      body.append(button.name, button.value);
    }
    target.setAttribute("aria-busy", "true");
    try {
      const init = { method: "POST", body: new URLSearchParams(body), headers: FRAGMENT };
      const html = await fragment(form.action, init);
      if (html !== null) {
        target.innerHTML = html;
      }
    } catch (error) {
      target.textContent = `Not sent: ${error}`;
    } finally {
      target.removeAttribute("aria-busy");
    }
  });
}

function showFirstInvalid() {
  const invalid = document.querySelector("form.entry.invalid, form.entry .field.invalid");
  if (invalid === null) {
    return;
  }
  const form = invalid.closest("form.entry");
  const entry = form.closest(".config-entry, .config-add") || form;
  const input = form.querySelector(".field.invalid :is(input, select)")
    || form.querySelector(".field :is(input, select)");
  entry.scrollIntoView({ block: "center" });
  if (input !== null) {
    input.focus({ preventScroll: true });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  showFirstInvalid();
  document.querySelectorAll("[data-live]").forEach(refreshEvery);
  document.querySelectorAll("form[data-inline]").forEach(sendInline);
});
