// The demo bank's own page code: navigation, the consent banner, product listings. It talks
// to Nerve only through the public widget API (window.Nerve).
(function () {
  var nav = document.createElement("header");
  nav.innerHTML =
    '<a class="brand" href="/demo/">Nerve Bank</a>' +
    '<nav aria-label="Main"><a href="/demo/loans.html">Loans</a> · <a href="/demo/funds.html">Funds</a> · ' +
    '<a href="/demo/cards.html">Cards</a> · <a href="/demo/account.html">Account</a></nav>';
  document.body.insertBefore(nav, document.body.firstChild);

  // The bank's consent banner. The choice goes to Nerve per purpose; "contact me" is the
  // marketing grant, which Nerve keeps in the browser and sends only once the visitor has
  // signed in (a signed identity token), never for an anonymous visitor.
  function banner() {
    var choice = localStorage.getItem("nerve_consent");
    if (choice !== null) return;
    var box = document.createElement("div");
    box.id = "consent";
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-label", "Cookie consent");
    var msg = document.createElement("span");
    msg.textContent = "We use your activity on this site to suggest products. OK?";
    var contact = document.createElement("label");
    contact.className = "check";
    var box2 = document.createElement("input");
    box2.type = "checkbox";
    box2.id = "consent-marketing";
    contact.append(box2, " Also contact me about offers");
    var yes = document.createElement("button");
    yes.textContent = "Accept";
    yes.id = "consent-accept";
    var no = document.createElement("button");
    no.textContent = "Decline";
    no.className = "secondary";
    no.id = "consent-decline";
    yes.onclick = function () {
      // unticked: marketing left unstated, so the consent of record the bank holds stands
      Nerve.consent({ analytics: true, personalization: true, marketing: box2.checked || undefined });
      box.remove();
    };
    no.onclick = function () { Nerve.consent(false); box.remove(); };
    box.append(msg, contact, yes, no);
    document.body.appendChild(box);
  }

  function listings() {
    var lists = document.querySelectorAll("[data-category-list]");
    if (!lists.length) return;
    fetch("/demo/catalog.json").then(function (r) { return r.json(); }).then(function (items) {
      lists.forEach(function (ul) {
        var cats = ul.dataset.categoryList.split(",");
        items.filter(function (i) { return cats.indexOf(i.category) >= 0; }).forEach(function (i) {
          var li = document.createElement("li");
          li.className = "card";
          var a = document.createElement("a");
          a.href = "/demo/" + i.category + "/" + encodeURIComponent(i.item_id);
          a.textContent = i.name;
          var p = document.createElement("p");
          p.textContent = i.category;
          li.append(a, p);
          ul.appendChild(li);
        });
      });
    });
  }

  // The bank's session (a cookie on a real site): who is signed in. The identity token for
  // Nerve comes from the bank's backend, which mints it with the site's secret; it is fetched
  // again on each page so that it is always fresh (it lives an hour).
  function signIn(user) {
    return fetch("/demo-site/sign-in", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: user })
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (s) {
      localStorage.setItem("demo_customer", s.user_id);
      Nerve.identify(s.user_id, s.token);
      return s;
    });
  }
  function signOut() {
    localStorage.removeItem("demo_customer");
    Nerve.reset();
  }
  // The account page's sign-in form (the bank's own login; the demo has no passwords).
  function account() {
    var form = document.getElementById("login");
    if (!form) return;
    var who = document.getElementById("who");
    function show() { who.textContent = "Signed in as: " + (localStorage.getItem("demo_customer") || "nobody (anonymous)"); }
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      signIn(form.user.value).then(show, function (err) { who.textContent = "Sign-in failed: " + err.message; });
    });
    document.getElementById("logout").onclick = function () { signOut(); show(); };
    show();
  }

  window.addEventListener("load", function () {
    if (window.Nerve && window.Nerve.consent) banner(); // the stub has it even if the widget is down
    var customer = localStorage.getItem("demo_customer");
    if (customer && window.Nerve && window.Nerve.identify) signIn(customer).catch(function () {});
    account();
    listings();
  });
})();
