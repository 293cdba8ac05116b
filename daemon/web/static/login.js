"use strict";
// A reload of the dashboard arrives here without a token (the page removed it from the address
// bar): present the one this tab kept. A token in the address bar means it was just refused.
(() => {
  const KEY = "genrelay.token";
  const params = new URLSearchParams(location.search);
  const kept = sessionStorage.getItem(KEY);
  if (params.has("token")) {
    sessionStorage.removeItem(KEY);
    history.replaceState(null, "", location.pathname);
    document.getElementById("rejected").hidden = false;
  } else if (kept) {
    location.replace("/?token=" + encodeURIComponent(kept));
  }
})();
