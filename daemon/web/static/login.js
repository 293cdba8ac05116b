"use strict";
// A reload of the dashboard arrives here without a token (the page removed it from the address
// bar): fetch the dashboard with the one this tab kept, in an Authorization header, and show it in
// place. The token is never written back into the address (history, proxies, Referer). A token in
// the address bar means it was just refused.
(() => {
  const KEY = "genrelay.token";
  const params = new URLSearchParams(location.search);
  const kept = sessionStorage.getItem(KEY);
  if (params.has("token")) {
    sessionStorage.removeItem(KEY);
    history.replaceState(null, "", location.pathname);
    document.getElementById("rejected").hidden = false;
  } else if (kept) {
    fetch("/", { headers: { Authorization: "Bearer " + kept } }).then(async (resp) => {
      if (!resp.ok) {
        sessionStorage.removeItem(KEY);
        document.getElementById("rejected").hidden = false;
        return;
      }
      const page = await resp.text();
      document.open();
      document.write(page);
      document.close();
    });
  }
})();
