// The trace viewer: filters, sorts and pages the examples embedded in this page.
// Plain script, no libraries and no network: every flag (right, agrees, states the answer) was
// computed when the page was written; here they are only counted and rendered, one page at a time.
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("sdrt-data").textContent);
  var EX = DATA.examples;
  var $ = function (id) { return document.getElementById(id); };
  var state = {
    prompt: "", source: "", task: "", agreement: "", mode: "", verdict: "", search: "",
    sort: "index", pageSize: 25, page: 0,
  };
  var filtered = [];
  var haystacks = null; // lower-cased text per example, built on the first search only

  function escapeHtml(text) {
    return String(text == null ? "" : text)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  function pct(num, den) {
    return den ? (100 * num / den).toFixed(1) + "% <small>(" + num + "/" + den + ")</small>" : "&ndash;";
  }

  function fixed(value, digits) {
    return value == null || isNaN(value) ? "&ndash;" : Number(value).toFixed(digits);
  }

  function traceOf(e, promptId) {
    for (var i = 0; i < e.tr.length; i++) if (e.tr[i].p === promptId) return e.tr[i];
    return null;
  }

  // "ens": the pseudo-label; "p:<id>": that prompt's step-2 answer; "r:<mode>": an evaluated mode.
  function verdictOf(e, mode) {
    if (mode === "ens") return e.ensOk;
    if (mode.slice(0, 2) === "p:") { var t = traceOf(e, mode.slice(2)); return t ? t.ok : null; }
    var r = e.res[mode.slice(2)];
    return r ? r.ok : null;
  }

  function haystack(i) {
    if (!haystacks) {
      haystacks = EX.map(function (e) {
        var parts = [e.id, e.q, e.ens, e.refs.join(" ")];
        e.tr.forEach(function (t) { parts.push(t.p, t.a, t.raw, t.ans); });
        Object.keys(e.res).forEach(function (m) { parts.push(e.res[m].pred); });
        return parts.join("\n").toLowerCase();
      });
    }
    return haystacks[i];
  }

  function keep(e, i) {
    if (state.prompt && !traceOf(e, state.prompt)) return false;
    if (state.source && e.src !== state.source) return false;
    if (state.task && e.task !== state.task) return false;
    if (state.agreement === "unanimous" && !e.una) return false;
    if (state.agreement === "split" && e.una) return false;
    if (state.mode && state.verdict) {
      var v = verdictOf(e, state.mode);
      if (v === null || v === undefined || v !== (state.verdict === "right")) return false;
    }
    if (state.search && haystack(i).indexOf(state.search) < 0) return false;
    return true;
  }

  function agreementOf(e) {
    if (e.agr != null) return e.agr;
    if (!e.tr.length) return 1;
    return e.tr.filter(function (t) { return t.agree; }).length / e.tr.length;
  }

  function mean(values) {
    var xs = values.filter(function (x) { return x != null && !isNaN(x); });
    return xs.length ? xs.reduce(function (a, b) { return a + b; }, 0) / xs.length : null;
  }

  var SORTS = {
    "index": null,
    "agreement-asc": function (e) { return agreementOf(e); },
    "agreement-desc": function (e) { return -agreementOf(e); },
    "loglik-asc": function (e) { var m = mean(e.tr.map(function (t) { return t.mlp; })); return m == null ? Infinity : m; },
    "analysis-desc": function (e) { var m = mean(e.tr.map(function (t) { return t.at; })); return m == null ? Infinity : -m; },
    "id": function (e) { return e.id; },
  };

  function applyFilters() {
    filtered = [];
    for (var i = 0; i < EX.length; i++) if (keep(EX[i], i)) filtered.push(i);
    var key = SORTS[state.sort];
    if (key) {
      var keys = {};
      filtered.forEach(function (i) { keys[i] = key(EX[i]); });
      filtered.sort(function (a, b) {
        return keys[a] < keys[b] ? -1 : keys[a] > keys[b] ? 1 : a - b; // stable: ties keep data order
      });
    }
    state.page = Math.min(state.page, Math.max(0, pageCount() - 1));
    renderSummary();
    renderPage();
  }

  function pageCount() { return Math.ceil(filtered.length / state.pageSize); }

  function renderSummary() {
    var rows = {};
    DATA.prompts.forEach(function (p) { rows[p] = { n: 0, okN: 0, ok: 0, agree: 0, lens: [], states: 0 }; });
    var ens = { n: 0, ok: 0 }, modes = {};
    DATA.modes.forEach(function (m) { modes[m] = { n: 0, ok: 0 }; });
    filtered.forEach(function (i) {
      var e = EX[i];
      e.tr.forEach(function (t) {
        var r = rows[t.p];
        r.n += 1;
        if (t.ok !== null) { r.okN += 1; if (t.ok) r.ok += 1; }
        if (t.agree) r.agree += 1;
        if (t.at != null) r.lens.push(t.at);
        if (t.states) r.states += 1;
      });
      if (e.ensOk !== null) { ens.n += 1; if (e.ensOk) ens.ok += 1; }
      DATA.modes.forEach(function (m) {
        var r = e.res[m];
        if (r && r.ok !== null) { modes[m].n += 1; if (r.ok) modes[m].ok += 1; }
      });
    });
    var html = "<tr><th>prompt</th><th>answers</th><th>accuracy vs references</th>" +
      "<th>agrees with ensemble</th><th>mean analysis tokens</th><th>states the answer in step 1</th></tr>";
    DATA.prompts.forEach(function (p) {
      var r = rows[p];
      html += '<tr data-prompt="' + escapeHtml(p) + '"' + (p === state.prompt ? ' class="chosen"' : "") + ">" +
        "<td>" + escapeHtml(p) + '</td><td class="n">' + r.n + '</td><td class="acc">' + pct(r.ok, r.okN) +
        '</td><td class="agree">' + pct(r.agree, r.n) + '</td><td class="alen">' + fixed(mean(r.lens), 1) +
        '</td><td class="states">' + pct(r.states, r.n) + "</td></tr>";
    });
    $("summary").innerHTML = html;
    var mhtml = '<tr><th>answer of</th><th>accuracy vs references</th></tr><tr data-mode="ens"><td>pseudo-label</td>' +
      '<td class="acc">' + pct(ens.ok, ens.n) + "</td></tr>";
    DATA.modes.forEach(function (m) {
      mhtml += '<tr data-mode="' + escapeHtml(m) + '"><td>' + escapeHtml(m) + ' (eval)</td><td class="acc">' +
        pct(modes[m].ok, modes[m].n) + "</td></tr>";
    });
    $("modes").innerHTML = mhtml;
  }

  function mark(ok) {
    if (ok === true) return ' <span class="mark right" title="right">&#10003;</span>';
    if (ok === false) return ' <span class="mark wrong" title="wrong">&#10007;</span>';
    return "";
  }

  function traceRow(t) {
    var analysis = t.a ? '<div class="analysis">' + escapeHtml(t.a) + "</div>"
      : '<span class="empty">' + (t.a === null ? "(no trace: answer from the results)" : "(empty)") + "</span>";
    var badges = (t.states ? ' <span class="tag">answers in step 1</span>' : "") +
      (t.agree ? "" : ' <span class="tag">differs from ensemble</span>');
    var raw = t.raw && t.raw.trim() !== t.ans.trim() ? '<div class="raw">' + escapeHtml(t.raw) + "</div>" : "";
    return '<tr class="trace" data-prompt="' + escapeHtml(t.p) + '"><td>' + escapeHtml(t.p) + badges + "</td>" +
      "<td>" + analysis + "</td><td><b>" + escapeHtml(t.ans) + "</b>" + mark(t.ok) + raw + "</td>" +
      '<td class="num">' + fixed(t.lp, 2) + "<br><small>" + fixed(t.mlp, 2) + "/tok</small></td>" +
      '<td class="num">' + fixed(t.w, 2) + "</td></tr>";
  }

  function card(e) {
    var img = e.img
      ? '<img src="' + escapeHtml(e.img) + '" alt="image of ' + escapeHtml(e.id) + '" decoding="async">'
      : '<div class="noimg">no image</div>';
    var traces = state.prompt ? e.tr.filter(function (t) { return t.p === state.prompt; }) : e.tr;
    var agreement = e.agr != null ? (100 * e.agr).toFixed(0) + "%" : "";
    var facts = '<span><span class="k">pseudo-label</span> <b>' + escapeHtml(e.ens) + "</b>" + mark(e.ensOk) +
      " <span class=\"tag\">" + (e.una ? "unanimous" : "split") + (agreement ? " " + agreement : "") + "</span></span>";
    if (e.refs.length) facts += '<span><span class="k">references</span> ' + escapeHtml(e.refs.join(" | ")) + "</span>";
    var results = Object.keys(e.res).map(function (m) {
      return '<span class="result" data-mode="' + escapeHtml(m) + '"><span class="k">' + escapeHtml(m) +
        "</span> " + escapeHtml(e.res[m].pred) + mark(e.res[m].ok) + "</span>";
    }).join("");
    return '<article class="ex" data-id="' + escapeHtml(e.id) + '"><div class="ex-img">' + img + "</div>" +
      '<div class="ex-body"><div class="ex-head"><span class="tag">' + escapeHtml(e.src) + '</span><span class="tag">' +
      escapeHtml(e.task) + "</span><code>" + escapeHtml(e.id) + "</code></div>" +
      '<p class="q">' + escapeHtml(e.q) + "</p>" + '<div class="facts">' + facts + "</div>" +
      (results ? '<div class="facts results">' + results + "</div>" : "") +
      '<table class="traces"><tr><th>prompt</th><th>step 1: analysis</th><th>step 2: answer</th>' +
      "<th>log-lik</th><th>weight</th></tr>" + traces.map(traceRow).join("") + "</table></div></article>";
  }

  function renderPage() {
    var start = state.page * state.pageSize;
    var slice = filtered.slice(start, start + state.pageSize);
    $("examples").innerHTML = slice.map(function (i) { return card(EX[i]); }).join("") ||
      '<p class="empty">No example passes these filters.</p>';
    $("shown-count").textContent = filtered.length;
    $("total-count").textContent = EX.length;
    var pages = Math.max(1, pageCount());
    document.querySelectorAll(".page-info").forEach(function (el) {
      el.textContent = "page " + (state.page + 1) + " of " + pages;
    });
    document.querySelectorAll(".prev").forEach(function (b) { b.disabled = state.page === 0; });
    document.querySelectorAll(".next").forEach(function (b) { b.disabled = state.page >= pages - 1; });
  }

  function fillSelect(id, values, label) {
    var select = $(id);
    values.forEach(function (v) {
      var option = document.createElement("option");
      option.value = v[0];
      option.textContent = label ? label(v) : v[1];
      select.appendChild(option);
    });
  }

  function distinct(key) {
    var seen = {};
    EX.forEach(function (e) { if (e[key]) seen[e[key]] = true; });
    return Object.keys(seen).sort();
  }

  function bind(id, field, transform) {
    var el = $(id);
    el.addEventListener(el.tagName === "INPUT" ? "input" : "change", function () {
      state[field] = transform ? transform(el.value) : el.value;
      state.page = 0;
      applyFilters();
    });
  }

  function setUp() {
    $("meta").textContent = EX.length + " examples (" + DATA.traced + " with traces) from " +
      DATA.traceDirs.join(", ") + "; K = " + DATA.prompts.length + " prompts" +
      (DATA.modes.length ? "; evaluated modes: " + DATA.modes.join(", ") : "") +
      ". Right: a score of at least " + DATA.rightScore + " against the references.";
    fillSelect("f-prompt", DATA.prompts.map(function (p) { return [p, p]; }));
    fillSelect("f-source", distinct("src").map(function (s) { return [s, s]; }));
    fillSelect("f-task", distinct("task").map(function (s) { return [s, s]; }));
    var modes = [["ens", "pseudo-label"]].concat(
      DATA.prompts.map(function (p) { return ["p:" + p, "prompt " + p]; }),
      DATA.modes.map(function (m) { return ["r:" + m, m + " (eval)"]; }));
    fillSelect("f-mode", modes);
    ["prompt", "source", "task", "agreement", "mode", "verdict"].forEach(function (f) { bind("f-" + f, f); });
    var timer = null;
    $("f-search").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        state.search = $("f-search").value.trim().toLowerCase();
        state.page = 0;
        applyFilters();
      }, 120);
    });
    bind("sort", "sort");
    bind("page-size", "pageSize", function (v) { return parseInt(v, 10); });
    document.querySelectorAll(".prev").forEach(function (b) {
      b.addEventListener("click", function () { state.page -= 1; renderPage(); window.scrollTo(0, 0); });
    });
    document.querySelectorAll(".next").forEach(function (b) {
      b.addEventListener("click", function () { state.page += 1; renderPage(); window.scrollTo(0, 0); });
    });
    $("reset").addEventListener("click", function () {
      ["f-prompt", "f-source", "f-task", "f-agreement", "f-mode", "f-verdict", "f-search"].forEach(function (id) {
        $(id).value = "";
      });
      Object.assign(state, { prompt: "", source: "", task: "", agreement: "", mode: "", verdict: "", search: "", page: 0 });
      applyFilters();
    });
  }

  setUp();
  applyFilters();
  document.body.setAttribute("data-rendered-ms", performance.now().toFixed(1));
})();
