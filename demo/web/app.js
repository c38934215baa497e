// The Edgebridge demo page: plain ES module, no build step, no dependencies.
//
// Streams (Server-Sent Events, same origin as the bridge):
//   /matches                 every match, a snapshot first, then live (teams, status, score, odds)
//   /scores                  every score report, live; resumed by event id after a drop
//   /users/{user}/bets       the user's verified bets (pending, then won/lost)
//   /users/{user}/profile    the user's balance
//   /odds                    every provider's odds in one shape (house and OddsCo), snapshot then live
// Bets: POST /bets with an Idempotency-Key, retried with the same key until answered.

const state = {
  user: null,
  token: null,
  matches: new Map(), // id -> match record
  bets: new Map(), // bet id -> bet record (latest version)
  scoreLog: {}, // match id -> minutes seen on /scores, in order (the browser test reads it)
  gaps: 0, // score reports found missing (a minute skipped)
  oddsChanges: 0,
  connection: "connecting",
  drops: 0,
  resumes: 0,
  selection: null, // {matchId, team, odds}
  providers: new Map(), // match id -> {house: odds|null, oddsco: odds|null}, from /odds
  prices: { house: 0, oddsco: 0 }, // odds records seen per provider (the browser test reads it)
};
window.demo = state; // for curious users and the browser test

const $ = (id) => document.getElementById(id);
const RETRY_DELAYS_MS = [300, 700, 1500, 3000, 5000];
let finishedShownMs = 20_000; // a finished match's card stays this long (config.json), then leaves

// Money and odds as text: two decimals, or a dash for anything that is not a finite number, so
// a bad value can never show as "NaN" or throw.
function money(value) {
  const number = typeof value === "string" ? Number(value) : value;
  return typeof number === "number" && Number.isFinite(number) ? number.toFixed(2) : "–";
}
state.money = money; // the browser test checks it with NaN and friends

// -- connection indicator -------------------------------------------------------------------

function setConnection(name, text) {
  state.connection = name;
  const el = $("connection");
  el.className = `connection ${name}`;
  el.dataset.state = name;
  $("connection-text").textContent = text;
}

// -- streams --------------------------------------------------------------------------------

function withToken(path) {
  return state.token ? `${path}${path.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(state.token)}` : path;
}

// An EventSource that, when it is closed for good (not just reconnecting), reopens itself from
// the last event id it saw, so nothing is missed either way.
class Stream {
  constructor(path, handlers, { auth = false, indicator = false } = {}) {
    this.path = path;
    this.handlers = handlers;
    this.auth = auth;
    this.indicator = indicator;
    this.lastEventId = null;
    this.open();
  }

  url() {
    let path = this.path;
    if (this.lastEventId) path += `?lastEventId=${encodeURIComponent(this.lastEventId)}`;
    return this.auth ? withToken(path) : path;
  }

  open() {
    const source = new EventSource(this.url());
    this.source = source;
    source.onopen = () => {
      if (!this.indicator) return;
      if (this.resuming) {
        state.resumes += 1;
        setConnection("resumed", `resumed from last event · ${state.gaps} missed`);
        this.resuming = false;
        setTimeout(() => state.connection === "resumed" && setConnection("live", "live"), 4000);
      } else {
        setConnection("live", "live");
      }
    };
    source.onerror = () => {
      if (source !== this.source) return;
      if (this.indicator) {
        this.resuming = true;
        setConnection("reconnecting", "reconnecting…");
      }
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. the bridge restarted and answered 503): resume ourselves.
        setTimeout(() => source === this.source && this.open(), 2000);
      }
    };
    // The bridge says the topic is not the one the last id was made in (recreated, truncated,
    // deleted): forget what this stream drew; what follows is new.
    source.addEventListener("reset", (message) => {
      if (message.lastEventId) this.lastEventId = message.lastEventId;
      this.handlers.reset?.();
    });
    for (const [event, handler] of Object.entries(this.handlers)) {
      if (event === "reset") continue;
      source.addEventListener(event, (message) => {
        if (message.lastEventId) this.lastEventId = message.lastEventId;
        let data;
        try {
          data = JSON.parse(message.data);
        } catch {
          data = message.data;
        }
        handler(data);
      });
    }
  }

  // Drop the connection on purpose, stay away a moment, come back from the last event id.
  drop(awayMs = 2500) {
    this.source.close();
    state.drops += 1;
    this.resuming = true;
    setConnection("reconnecting", "dropped · reconnecting…");
    setTimeout(() => this.open(), awayMs);
  }
}

// -- matches and scores ---------------------------------------------------------------------

function onMatch(match) {
  const previous = state.matches.get(match.id);
  state.matches.set(match.id, match);
  renderMatch(match, previous);
}

function onScore(score) {
  const log = (state.scoreLog[score.match] ||= []);
  const last = log.length ? log[log.length - 1] : null;
  if (last !== null && score.minute > last + 1) state.gaps += score.minute - last - 1;
  if (last === null || score.minute !== last) log.push(score.minute);
  const match = state.matches.get(score.match);
  if (match) {
    Object.assign(match, { score: { home: score.home, away: score.away }, minute: score.minute, status: score.status });
    renderMatch(match, null);
  }
}

function matchCard(match) {
  let card = document.querySelector(`[data-match="${CSS.escape(match.id)}"]`);
  if (card) return card;
  $("matches").querySelector(".empty")?.remove();
  card = document.createElement("article");
  card.className = "match";
  card.dataset.match = match.id;
  card.innerHTML = `
    <header><span class="status"></span><span class="minute"></span></header>
    <div class="scoreline"><span class="team home"></span><span class="score"></span><span class="team away"></span></div>
    <div class="odds">
      <button type="button" data-team="home"><span class="name"></span><span class="price">–</span></button>
      <button type="button" data-team="away"><span class="name"></span><span class="price">–</span></button>
    </div>`;
  for (const button of card.querySelectorAll(".odds button")) {
    button.addEventListener("click", () => select(match.id, button.dataset.team));
  }
  // Live matches first, then scheduled, then finished.
  $("matches").append(card);
  return card;
}

const ORDER = { LIVE: 0, SCHEDULED: 1, COMPLETED: 2, CANCELED: 3 };

function renderMatch(match, previous) {
  const card = matchCard(match);
  card.style.order = String(ORDER[match.status] ?? 4);
  card.querySelector(".status").textContent = match.status;
  card.querySelector(".status").className = `status ${match.status}`;
  card.querySelector(".minute").textContent = match.status === "SCHEDULED" ? "kick-off soon" : `${match.minute}'`;
  card.querySelector(".team.home").textContent = match.home;
  card.querySelector(".team.away").textContent = match.away;
  const score = match.score || { home: 0, away: 0 };
  card.querySelector(".score").textContent = `${score.home} – ${score.away}`;
  for (const button of card.querySelectorAll(".odds button")) {
    const team = button.dataset.team;
    const price = match.odds ? match.odds[team] : null;
    button.querySelector(".name").textContent = match[team];
    button.querySelector(".price").textContent = price ? money(price) : "–";
    button.disabled = !price;
    const before = previous?.odds?.[team];
    if (price && before && price !== before) {
      state.oddsChanges += 1;
      button.classList.remove("up", "down", "flash");
      void button.offsetWidth; // restart the flash animation
      button.classList.add(price > before ? "up" : "down", "flash");
    }
  }
  if (state.selection?.matchId === match.id) refreshSelection();
  if (match.status === "COMPLETED" || match.status === "CANCELED") retireLater(match.id);
}

// A finished match stays on the page a while (its result, settled bets), then its card leaves,
// so a long-running page does not pile up cards.
const retiring = new Map(); // match id -> timer
function retireLater(matchId) {
  if (retiring.has(matchId)) return;
  retiring.set(matchId, setTimeout(() => {
    retiring.delete(matchId);
    const match = state.matches.get(matchId);
    if (!match || (match.status !== "COMPLETED" && match.status !== "CANCELED")) return;
    state.matches.delete(matchId);
    document.querySelector(`[data-match="${CSS.escape(matchId)}"]`)?.remove();
    if (state.selection?.matchId === matchId) $("clear").click();
  }, finishedShownMs));
}

// -- odds providers ----------------------------------------------------------------------------

// Every record of the odds topic has the same shape whoever priced it: the house's engine writes
// it, OddsCo's percentages are made into it by the bridge (routing.toml, odds-oddsco).
const SHOWN_PROVIDER_ROWS = 6;
function onOdds(record) {
  if (!record || typeof record !== "object" || typeof record.match !== "string") return;
  const provider = record.provider === "oddsco" ? "oddsco" : "house";
  state.prices[provider] += 1;
  const row = state.providers.get(record.match) || { house: null, oddsco: null, at: 0 };
  row[provider] = record.odds;
  row.at = Math.max(row.at, Number(record.at) || 0);
  state.providers.delete(record.match); // newest last
  state.providers.set(record.match, row);
  while (state.providers.size > SHOWN_PROVIDER_ROWS) {
    state.providers.delete(state.providers.keys().next().value);
  }
  renderProviders();
}

function priceText(odds) {
  return odds ? `${money(odds.home)} / ${money(odds.away)}` : "–";
}

function renderProviders() {
  const body = $("provider-rows");
  body.replaceChildren();
  for (const [matchId, row] of [...state.providers].reverse()) {
    const tr = document.createElement("tr");
    tr.dataset.providerMatch = matchId;
    const name = document.createElement("td");
    const match = state.matches.get(matchId);
    name.textContent = match ? `${match.home} v ${match.away}` : matchId;
    tr.append(name);
    for (const provider of ["house", "oddsco"]) {
      const cell = document.createElement("td");
      cell.className = `price ${provider}`;
      cell.textContent = priceText(row[provider]);
      tr.append(cell);
    }
    body.append(tr);
  }
}

// -- bet slip -------------------------------------------------------------------------------

function select(matchId, team) {
  const match = state.matches.get(matchId);
  if (!match?.odds) return;
  state.selection = { matchId, team, odds: match.odds[team] };
  $("slip-empty").hidden = true;
  $("slip-form").hidden = false;
  setSlipStatus("", "");
  refreshSelection();
}

function refreshSelection() {
  const { matchId, team, odds } = state.selection;
  const match = state.matches.get(matchId);
  const now = match?.odds?.[team];
  const moved = now && now !== odds ? ` <em>(now ${money(now)})</em>` : "";
  $("slip-selection").innerHTML = `<strong>${match[team]}</strong> to beat ${match[team === "home" ? "away" : "home"]}<br>
    @ <strong class="slip-odds">${money(odds)}</strong>${moved}`;
}

function setSlipStatus(text, kind) {
  const el = $("slip-status");
  el.textContent = text;
  el.className = `slip-status ${kind}`;
}

async function placeBet(event) {
  event.preventDefault();
  const { matchId, team, odds } = state.selection;
  const body = JSON.stringify({ userId: state.user, matchId, team, amount: Number($("stake").value), odds });
  // One key per bet, reused by every retry: the bridge answers a retry with the first answer
  // and never produces the bet twice.
  const key = newKey();
  $("place").disabled = true;
  try {
    const { status, answer } = await sendWithRetries(body, key);
    if (status === 201) {
      setSlipStatus(`Verified ✓ potential win ${money(answer.potentialWinnings)}`, "ok");
    } else if (answer?.title === "odds-changed") {
      state.selection.odds = answer.odds;
      refreshSelection();
      setSlipStatus(`Odds moved to ${money(answer.odds)}: place again to accept`, "bad");
    } else {
      setSlipStatus(answer?.detail || `Refused (${status})`, "bad");
    }
  } catch (error) {
    setSlipStatus(`Not placed: ${error.message}`, "bad");
  } finally {
    $("place").disabled = false;
  }
}

async function sendWithRetries(body, key) {
  let lastError = null;
  for (let attempt = 0; attempt <= RETRY_DELAYS_MS.length; attempt++) {
    if (attempt > 0) {
      setSlipStatus(`Retrying (${attempt})…`, "wait");
      await sleep(RETRY_DELAYS_MS[attempt - 1]);
    } else {
      setSlipStatus("Placing…", "wait");
    }
    try {
      let response = await fetch("/bets", {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": key, ...authHeader() },
        body,
      });
      if (response.status === 202) response = await awaitReply(response);
      // 409 without a problem body of ours = the same key still in flight; 5xx = try again.
      const answer = await response.json().catch(() => null);
      const retryable = response.status >= 500 || response.status === 429 ||
        (response.status === 409 && !answer?.type?.includes("/demo/problems/"));
      if (!retryable) return { status: response.status, answer };
      lastError = new Error(answer?.detail || `HTTP ${response.status}`);
    } catch (error) {
      lastError = error; // network error: the bet may or may not be in; the same key makes retrying safe
    }
  }
  throw lastError;
}

async function awaitReply(accepted) {
  const { location } = await accepted.json();
  for (;;) {
    const response = await fetch(location, { headers: { prefer: "wait=10", ...authHeader() } });
    if (response.status !== 202) return response;
  }
}

// crypto.randomUUID exists only in secure contexts (https, localhost); a phone opening the demo
// over the LAN by IP address is not one, getRandomValues works everywhere.
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function authHeader() {
  return state.token ? { authorization: `Bearer ${state.token}` } : {};
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -- my bets and balance --------------------------------------------------------------------

function onBet(bet) {
  state.bets.set(bet.id, bet);
  const list = $("bets");
  list.innerHTML = "";
  const bets = [...state.bets.values()].sort((a, b) => b.placedAt - a.placedAt);
  for (const b of bets) {
    const item = document.createElement("li");
    item.dataset.bet = b.id;
    item.dataset.status = b.status;
    item.innerHTML = `<span>${b.teamName || b.team} · ${money(b.amount)} @ ${money(b.odds)}
      <br><small>${b.matchId}</small></span><span class="badge ${b.status}">${b.status}</span>`;
    list.append(item);
  }
}

function onProfile(profile) {
  $("balance").textContent = money(profile.balance);
}

// -- jurisdiction: a market offered in one region only ----------------------------------------

// Opens the GB-only in-play stream with a token and reports what the bridge answers: 200 (the
// stream opens, then is closed here) or 451 with a problem document naming the rule.
async function checkRegional(token, elementId) {
  const el = $(elementId);
  const controller = new AbortController();
  try {
    const headers = { accept: "text/event-stream" };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch("/in-play/gb", { headers, signal: controller.signal });
    if (response.status === 200) {
      el.textContent = "offered (200)";
    } else {
      const problem = await response.json().catch(() => ({}));
      el.textContent = response.status === 451 ? "not offered in this region (451)" : `refused (${response.status})`;
      el.title = problem.detail || "";
    }
    // Last: the status says the answer is shown (the problem body is read before the text).
    el.dataset.status = String(response.status);
  } catch (error) {
    el.textContent = "unknown";
  } finally {
    controller.abort();
  }
}

// -- start ----------------------------------------------------------------------------------

async function start() {
  const config = await (await fetch("/app/config.json")).json();
  state.user = config.user;
  state.token = config.token;
  if (Number.isFinite(config.finishedShownMs)) finishedShownMs = config.finishedShownMs;
  $("user").textContent = state.user;
  new Stream("/matches", {
    match: onMatch,
    reset: () => {
      state.matches.clear();
      $("matches").querySelectorAll(".match").forEach((card) => card.remove());
    },
  });
  new Stream("/odds", { odds: onOdds, reset: () => { state.providers.clear(); renderProviders(); } });
  state.scores = new Stream("/scores", { score: onScore, reset: () => { state.scoreLog = {}; } }, { indicator: true });
  const user = encodeURIComponent(state.user);
  new Stream(`/users/${user}/bets`, { bet: onBet }, { auth: true });
  new Stream(`/users/${user}/profile`, { profile: onProfile }, { auth: true });
  checkRegional(state.token, "regional-you");
  checkRegional(config.visitorToken, "regional-visitor");
  $("drop").addEventListener("click", () => state.scores.drop());
  $("slip-form").addEventListener("submit", placeBet);
  $("clear").addEventListener("click", () => {
    state.selection = null;
    $("slip-form").hidden = true;
    $("slip-empty").hidden = false;
  });
}

start();
