// Drives the Telegram Mini App in headless Chromium at phone size, in light and dark themes, with a
// stand-in for Telegram's telegram-web-app.js that hands the page init data signed by the test:
//   node miniapp.mjs '<JSON config>' <screenshot dir>
// The config (from tests/tests/miniapp_page.rs): base, org, and per person the signed init data
// (customer, cashier, owner), the customer's phone, the other shop's customer id, the bill to create,
// the cashier to add, the role to change, the staff member to remove, the percentage to type in the
// settings and the bill to cancel. Talks to the Rust test on stdin/stdout: prints {"phase":"visited",...}
// after the customer's first visit and waits for a line on stdin (the test has then written the
// customer's history). Prints one last JSON line of what it saw; exits 1 on a failure.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [configText, shots] = process.argv.slice(2);
if (!shots) {
  console.error("usage: node miniapp.mjs '<config json>' <screenshot dir>");
  process.exit(2);
}
const config = JSON.parse(configText);
const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once("line", resolve));

const THEMES = {
  light: {
    bg_color: "#ffffff", text_color: "#000000", hint_color: "#707579", link_color: "#2481cc",
    button_color: "#2481cc", button_text_color: "#ffffff", secondary_bg_color: "#f1f1f4",
    section_bg_color: "#ffffff", accent_text_color: "#2481cc", destructive_text_color: "#e53935",
    header_bg_color: "#ffffff",
  },
  dark: {
    bg_color: "#17212b", text_color: "#f5f5f5", hint_color: "#708499", link_color: "#6ab3f3",
    button_color: "#5288c1", button_text_color: "#ffffff", secondary_bg_color: "#232e3c",
    section_bg_color: "#17212b", accent_text_color: "#6ab2f2", destructive_text_color: "#ec3942",
    header_bg_color: "#17212b",
  },
};

/** What telegram-web-app.js would define, for one person: their init data, the theme, and
 *  recorders of what the page asks of the client (window.__tg). */
function standIn(initData) {
  const unsafe = {};
  for (const [key, value] of new URLSearchParams(initData)) {
    unsafe[key] = key === "user" ? JSON.parse(value) : value;
  }
  return `(() => {
  const themes = ${JSON.stringify(THEMES)};
  const calls = window.__tg = { haptics: [], links: [], scans: 0, scanClosed: 0, writeAccess: 0,
                                back: false, ready: 0, expanded: 0, themeListeners: 0, confirms: [] };
  const handlers = {};
  let onBack = null;
  function paint(scheme) {
    const root = document.documentElement;
    for (const [key, value] of Object.entries(themes[scheme])) {
      root.style.setProperty("--tg-theme-" + key.replace(/_/g, "-"), value);
    }
    WebApp.colorScheme = scheme;
    WebApp.themeParams = themes[scheme];
  }
  const WebApp = {
    initData: ${JSON.stringify(initData)},
    initDataUnsafe: ${JSON.stringify(unsafe)},
    version: "8.0",
    platform: "android",
    colorScheme: "light",
    themeParams: themes.light,
    isVersionAtLeast(v) {
      const want = String(v).split(".").map(Number), have = this.version.split(".").map(Number);
      for (let i = 0; i < Math.max(want.length, have.length); i++) {
        if ((have[i] || 0) !== (want[i] || 0)) return (have[i] || 0) > (want[i] || 0);
      }
      return true;
    },
    ready() { calls.ready++; },
    expand() { calls.expanded++; },
    onEvent(name, fn) { (handlers[name] ||= []).push(fn); if (name === "themeChanged") calls.themeListeners++; },
    offEvent() {},
    BackButton: {
      isVisible: false,
      show() { this.isVisible = true; calls.back = true; },
      hide() { this.isVisible = false; calls.back = false; },
      onClick(fn) { onBack = fn; },
      offClick() { onBack = null; },
    },
    HapticFeedback: {
      impactOccurred(style) { calls.haptics.push("impact:" + style); },
      notificationOccurred(type) { calls.haptics.push("notification:" + type); },
      selectionChanged() { calls.haptics.push("selection"); },
    },
    openTelegramLink(url) { calls.links.push(url); },
    openLink(url) { calls.links.push(url); },
    showScanQrPopup(params, callback) {
      calls.scans++;
      calls.scanText = params && params.text;
      setTimeout(() => { if (callback(window.__tgScanResult) === true) calls.scanClosed++; }, 10);
    },
    closeScanQrPopup() { calls.scanClosed++; },
    requestWriteAccess(callback) { calls.writeAccess++; setTimeout(() => callback(true), 10); },
    showConfirm(message, callback) { calls.confirms.push(message); setTimeout(() => callback(true), 0); },
  };
  window.Telegram = { WebApp };
  paint("light");
  window.__tgBack = () => onBack && onBack();
  window.__tgTheme = (scheme) => { paint(scheme); for (const fn of handlers.themeChanged || []) fn(); };
})();`;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = { shots: [] };
const problems = [];
// Statuses a step provokes on purpose (the browser logs each refused request as a console error).
let expectedStatus = null;

async function person(initData) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, hasTouch: true, isMobile: true });
  await context.route("https://telegram.org/js/telegram-web-app.js", (route) =>
    route.fulfill({ status: 200, contentType: "text/javascript", body: standIn(initData) }));
  // Nothing else leaves the test's own server.
  await context.route(/^https?:\/\/(?!127\.0\.0\.1)/, (route) => {
    if (!route.request().url().startsWith("https://telegram.org/js/telegram-web-app.js")) {
      problems.push(`request outside the service: ${route.request().url()}`);
      return route.abort();
    }
    return route.fallback();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() !== "error") return;
    if (expectedStatus && text.includes(`status of ${expectedStatus}`)) return;
    problems.push(`console error: ${text}`);
  });
  return page;
}

const text = (s) => String(s || "").replace(/[\s\u00a0\u202f]+/g, " ").trim();

/** Screenshots of the screen in view, light then dark (switched as Telegram does: themeChanged),
 *  and whether anything is wider than the phone. */
async function shoot(page, name) {
  for (const scheme of ["light", "dark"]) {
    await page.evaluate((s) => window.__tgTheme(s), scheme);
    await page.waitForFunction((s) => document.documentElement.dataset.scheme === s, scheme);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    if (overflow) problems.push(`${name} (${scheme}) is wider than the phone`);
    const file = `${name}-${scheme}.png`;
    await page.screenshot({ path: `${shots}/${file}`, fullPage: true });
    seen.shots.push(file);
  }
  await page.evaluate(() => window.__tgTheme("light"));
}

async function cspViolations(page, who) {
  const violations = await page.evaluate(() => window.__csp);
  for (const v of violations) problems.push(`${who}: CSP violation ${v}`);
}

try {
  const app = `${config.base}/app/${config.org}/`;

  // ---- the customer's first visit, through a friend's link ---------------------------------------
  const customer = await person(config.customer);
  await customer.goto(app);
  await customer.waitForSelector("body[data-loaded=true]");
  seen.ready_called = await customer.evaluate(() => window.__tg.ready);
  seen.expanded = await customer.evaluate(() => window.__tg.expanded > 0);
  seen.lang = await customer.evaluate(() => document.documentElement.lang);
  seen.referral_note = text(await customer.locator("#referral").innerText());
  seen.welcome_haptic = await customer.evaluate(() => window.__tg.haptics.includes("notification:success"));
  seen.tabs_for_customer = await customer.locator("#tabs").isVisible();
  seen.customer_id = text(await customer.locator("#code-digits").innerText());
  await shoot(customer, "customer-first-visit");
  await cspViolations(customer, "customer");
  console.log(JSON.stringify({ phase: "visited", customer_id: seen.customer_id }));
  await nextLine();

  // ---- back later: balances, the history as it scrolls, the code, the share link -----------------
  await customer.reload();
  await customer.waitForSelector("body[data-loaded=true]");
  seen.referral_note_again = await customer.locator("#referral").isVisible();
  seen.bonuses = text(await customer.locator("#balance-bonuses").innerText());
  seen.referral_bonuses = text(await customer.locator("#balance-referral").innerText());
  seen.debt = text(await customer.locator("#balance-debt").innerText());
  seen.soon = text(await customer.locator("#soon").innerText());
  await customer.waitForFunction(() => {
    const img = document.getElementById("code-image");
    return !img.hidden && img.complete && img.naturalWidth > 0;
  });
  seen.code_image = await customer.evaluate(() => {
    const img = document.getElementById("code-image");
    return { blob: img.src.startsWith("blob:"), width: img.naturalWidth, shown: img.getBoundingClientRect().width };
  });
  seen.code_digits = text(await customer.locator("#code-digits").innerText());
  seen.promo_code = text(await customer.locator("#promo-code").innerText());
  seen.contacts = await customer.evaluate(() => [...document.querySelectorAll("#contact-links a")].map((a) => ({ text: a.textContent, href: a.getAttribute("href") })));
  // The history is its own request after the profile (`data-loaded` is set before it answers).
  await customer.waitForFunction(() => Number(document.getElementById("history").dataset.pages || 0) >= 1);
  seen.history_first_page = await customer.locator("#history li").count();
  await shoot(customer, "customer");

  // Scrolling to the end loads the next page.
  await customer.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  await customer.waitForFunction(() => document.getElementById("history").dataset.pages === "2");
  await customer.waitForFunction(() => document.getElementById("history-more").hidden);
  seen.history_after_scroll = await customer.locator("#history li").count();
  seen.history_pages = await customer.evaluate(() => Number(document.getElementById("history").dataset.pages));
  seen.history_first_row = text(await customer.locator("#history li").first().innerText());
  seen.history_last_row = text(await customer.locator("#history li").last().innerText());
  await customer.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  await shoot(customer, "customer-history");

  seen.share_visible = await customer.locator("#share").isVisible();
  if (seen.share_visible) {
    await customer.click("#share");
    seen.share_opened = await customer.evaluate(() => window.__tg.links.slice(-1)[0] || null);
  }
  seen.write_access_visible = await customer.locator("#write-access").isVisible();
  if (seen.write_access_visible) {
    await customer.click("#write-access-button");
    await customer.locator("#write-access").waitFor({ state: "hidden" });
    seen.write_access_asked = await customer.evaluate(() => window.__tg.writeAccess);
  }
  await cspViolations(customer, "customer");

  // ---- the cashier: finds the customer by phone, accrues, creates a bill for the POS --------------
  const cashier = await person(config.cashier);
  await cashier.goto(app);
  await cashier.waitForSelector("body[data-loaded=true]");
  seen.cashier_lang = await cashier.evaluate(() => document.documentElement.lang);
  seen.cashier_tabs = await cashier.locator("#tabs").isVisible();
  seen.cashier_owner_buttons = await cashier.locator(".owner-only:visible").count();
  await cashier.click("#tab-shop");
  seen.scan_offered = await cashier.locator("#scan").isVisible();
  await cashier.fill("#search-q", config.customer_phone_typed);
  await cashier.click("#search-form button[type=submit]");
  const found = cashier.locator(`#results li[data-id="${seen.customer_id}"]`);
  await found.waitFor();
  seen.search_result = text(await found.innerText());
  await shoot(cashier, "cashier-search");
  await found.click();
  await cashier.locator('section[data-screen="customer"]').waitFor({ state: "visible" });
  seen.back_button_on_card = await cashier.evaluate(() => window.__tg.back);
  seen.card_before = text(await cashier.locator("#card-bonuses").innerText());

  // A double tap on "Accrue" is one accrual: the second tap finds the button disabled.
  await cashier.fill("#bonus-amount", config.accrual.typed);
  await cashier.fill("#bonus-reason", config.accrual.reason);
  await cashier.evaluate(() => {
    const button = document.querySelector('#bonus-form button[data-op="accrue"]');
    button.click();
    button.click();
  });
  await cashier.locator("#card-done").waitFor({ state: "visible" });
  seen.accrued_line = text(await cashier.locator("#card-done").innerText());
  seen.card_after = text(await cashier.locator("#card-bonuses").innerText());
  await shoot(cashier, "cashier-card");

  await cashier.fill("#bill-number", config.bill.number);
  await cashier.fill("#bill-total", config.bill.total);
  await cashier.fill("#bill-bonus", config.bill.bonus);
  await cashier.click("#bill-form button[type=submit]");
  await cashier.locator("#card-done", { hasText: config.bill.number }).waitFor();
  seen.bill_line = text(await cashier.locator("#card-done").innerText());
  seen.card_after_bill = text(await cashier.locator("#card-bonuses").innerText());

  // Back to the start with Telegram's back button, then the open bills.
  await cashier.evaluate(() => window.__tgBack());
  await cashier.locator('section[data-screen="home"]').waitFor({ state: "visible" });
  seen.back_button_home = await cashier.evaluate(() => window.__tg.back);
  await cashier.click('[data-goto="bills"]');
  const bill = cashier.locator("#bills li", { hasText: config.bill.number });
  await bill.waitFor();
  seen.open_bill = text(await bill.innerText());
  await shoot(cashier, "cashier-bills");
  await cashier.evaluate(() => window.__tgBack());
  await cashier.locator('section[data-screen="home"]').waitFor({ state: "visible" });

  // Another shop's customer, scanned: refused, and the page says so.
  expectedStatus = config.refused_status;
  await cashier.evaluate((id) => { window.__tgScanResult = id; }, config.other_customer);
  await cashier.click("#scan");
  await cashier.locator("#status").waitFor({ state: "visible" });
  seen.refused = text(await cashier.locator("#status").innerText());
  seen.scan_closed = await cashier.evaluate(() => window.__tg.scanClosed > 0);
  seen.scan_text = await cashier.evaluate(() => window.__tg.scanText);
  await shoot(cashier, "cashier-refused");
  expectedStatus = null;
  seen.cashier_haptics = await cashier.evaluate(() => window.__tg.haptics);
  await cspViolations(cashier, "cashier");

  // ---- the owner adds a cashier ----------------------------------------------------------------------
  const owner = await person(config.owner);
  await owner.goto(app);
  await owner.waitForSelector("body[data-loaded=true]");
  await owner.click("#tab-shop");
  seen.owner_buttons = await owner.locator(".owner-only:visible").count();
  await owner.click('[data-goto="staff"]');
  await owner.locator('section[data-screen="staff"]').waitFor({ state: "visible" });
  await owner.fill("#staff-id", String(config.new_cashier.telegram_id));
  await owner.fill("#staff-name", config.new_cashier.name);
  await owner.selectOption("#staff-role", "cashier");
  await owner.click("#staff-form button[type=submit]");
  const added = owner.locator(`#staff-list li[data-id="${config.new_cashier.telegram_id}"]`);
  await added.waitFor();
  seen.staff_added = text(await added.innerText());
  seen.staff_added_role = await added.locator("select").inputValue();
  seen.staff_line = text(await owner.locator("#card-done").innerText());
  await shoot(owner, "owner-staff");

  // The owner makes the new cashier an owner, then removes the first cashier (confirmed).
  const changed = owner.locator(`#staff-list li[data-id="${config.role_change.telegram_id}"] select`);
  await Promise.all([
    owner.waitForResponse((r) => r.request().method() === "PATCH" && r.url().endsWith(`/staff/${config.role_change.telegram_id}`)),
    changed.selectOption(config.role_change.role),
  ]);
  await owner.waitForFunction((id) => {
    const select = document.querySelector(`#staff-list li[data-id="${id}"] select`);
    return select && !select.disabled;
  }, config.role_change.telegram_id);
  seen.role_line = text(await owner.locator("#card-done").innerText());
  seen.role_shown = await changed.inputValue();
  const removed = owner.locator(`#staff-list li[data-id="${config.remove_staff}"]`);
  await removed.locator("button.danger").click();
  await removed.waitFor({ state: "detached" });
  seen.remove_confirm = await owner.evaluate(() => window.__tg.confirms.slice(-1)[0] || null);
  await owner.locator("#card-done", { hasText: "удалён" }).waitFor();
  seen.removed_line = text(await owner.locator("#card-done").innerText());
  seen.staff_left = await owner.evaluate(() => [...document.querySelectorAll("#staff-list li")].map((li) => li.dataset.id));
  await shoot(owner, "owner-staff-changed");
  await owner.evaluate(() => window.__tgBack());
  await owner.click('[data-goto="audit"]');
  await owner.locator("#audit li").first().waitFor();
  seen.audit_rows = await owner.locator("#audit li").count();
  await shoot(owner, "owner-audit");
  await owner.evaluate(() => window.__tgBack());
  await owner.click('[data-goto="settings"]');
  await owner.waitForFunction(() => document.getElementById("set-invoice").value !== "");
  seen.settings_invoice = await owner.inputValue("#set-invoice");
  await shoot(owner, "owner-settings");

  // The owner types a new percentage as people do (a decimal comma) and saves.
  await owner.fill("#set-invoice", config.settings.invoice_typed);
  await Promise.all([
    owner.waitForResponse((r) => r.request().method() === "PATCH" && r.url().endsWith(`/orgs/${config.org}`)),
    owner.click("#settings-form button[type=submit]"),
  ]);
  await owner.locator("#card-done", { hasText: "сохранен" }).waitFor();
  await owner.waitForFunction(() => !document.querySelector("#settings-form button[type=submit]").disabled);
  seen.settings_line = text(await owner.locator("#card-done").innerText());
  seen.settings_invoice_after = await owner.inputValue("#set-invoice");
  await shoot(owner, "owner-settings-saved");

  // The owner cancels an open bill.
  await owner.evaluate(() => window.__tgBack());
  await owner.click('[data-goto="bills"]');
  const toCancel = owner.locator(`#bills li[data-id="${config.bill_to_cancel}"]`);
  await toCancel.waitFor();
  seen.bills_before_cancel = await owner.locator("#bills li").count();
  await shoot(owner, "owner-bills");
  await toCancel.locator("button.danger").click();
  await toCancel.waitFor({ state: "detached" });
  await owner.locator("#card-done", { hasText: "отменён" }).waitFor();
  seen.cancel_line = text(await owner.locator("#card-done").innerText());
  seen.cancel_confirm = await owner.evaluate(() => window.__tg.confirms.slice(-1)[0] || null);
  seen.bills_after_cancel = await owner.locator("#bills li").count();
  await shoot(owner, "owner-bill-cancelled");
  await cspViolations(owner, "owner");
} catch (error) {
  problems.push(String(error && error.message ? error.message : error));
} finally {
  await browser.close();
  stdin.close();
}
seen.problems = problems;
console.log(JSON.stringify(seen));
process.exit(problems.length ? 1 : 0);
