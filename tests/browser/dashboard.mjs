// Drives the operators' dashboard in headless Chromium, as an operator would:
//   node dashboard.mjs <base url> <admin token> <dead letter id> <last error> <screenshot dir>
// Signs in (a wrong token first), finds the dead letter with its error, replays it with its
// button, and sees it leave the list. Prints one JSON line of what it saw; exits 1 on a failure.
import { chromium } from "playwright-core";

const [base, token, deadId, lastError, shots] = process.argv.slice(2);
if (!shots) {
  console.error("usage: node dashboard.mjs <base> <token> <dead id> <last error> <screenshot dir>");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = {};
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  // Any script error or Content-Security-Policy violation fails the test.
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // The wrong token's requests are refused on purpose; the browser logs each refusal.
    const expected = /status of 401/.test(message.text());
    if (message.type() === "error" && !expected) problems.push(`console error: ${message.text()}`);
  });

  await page.goto(`${base}/admin`);
  await page.locator("#login").waitFor({ state: "visible" });

  // A wrong token is refused and asked for again.
  await page.fill("#token", "not-the-token");
  await page.click("#login button[type=submit]");
  await page.locator("#login-error", { hasText: "The token was refused." }).waitFor();
  seen.wrong_token_refused = true;

  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("body[data-loaded=true]");
  seen.token_in_session_storage = await page.evaluate(() => sessionStorage.getItem("loyalty.adminToken") !== null);
  seen.token_in_local_storage = await page.evaluate(() => localStorage.length > 0);

  const row = page.locator(`#dead-receipts tr[data-id="${deadId}"]`);
  await row.waitFor();
  seen.dead_letter_row = (await row.innerText()).replace(/\s+/g, " ").trim();
  if (!seen.dead_letter_row.includes(lastError)) problems.push(`the dead letter's row lacks its error: ${seen.dead_letter_row}`);
  seen.health = await page.locator("#health").innerText();
  seen.health_class = await page.locator("#health").getAttribute("class");
  seen.dead_tile = await page.locator('.tile[data-label="Dead receipts"] strong').innerText();
  seen.receipt_statuses = await page.locator("#receipt-statuses tbody").innerText();
  seen.failed_receipts = await page.locator("#failed-receipts tbody").innerText();
  seen.queue_rows = await page.locator("#queues tbody tr[data-queue]").count();
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  // Readable on a phone: nothing wider than the screen but the scrolling tables.
  await page.setViewportSize({ width: 390, height: 844 });
  seen.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await page.screenshot({ path: `${shots}/dashboard-phone.png` });
  await page.setViewportSize({ width: 1280, height: 900 });

  await row.locator("button.replay").click();
  seen.flash = await page.locator("#flash", { hasText: "Replayed" }).innerText();
  await row.waitFor({ state: "detached" });
  seen.dead_letter_gone = true;
  await page.screenshot({ path: `${shots}/dashboard-replayed.png`, fullPage: true });

  seen.dead_tile_after = await page.locator('.tile[data-label="Dead receipts"] strong').innerText();

  // It refreshes by itself: "Updated <time>" changes with no click.
  const updated = await page.locator("#updated").innerText();
  await page.waitForFunction(
    (before) => document.getElementById("updated").textContent !== before,
    updated,
    { timeout: 15000 },
  );
  seen.refreshed_by_itself = true;
  // The replayed receipt reached the worker and was applied: the processed count shows it.
  await page.waitForFunction(() => {
    const cell = document.querySelector('#receipt-statuses tr[data-status="processed"] td:nth-child(2)');
    return cell && cell.textContent.trim() !== "0";
  }, null, { timeout: 20000 });
  seen.processed_after_replay = await page.locator('#receipt-statuses tr[data-status="processed"]').innerText();

  // Signing out forgets the token.
  await page.click("#signout");
  await page.locator("#login").waitFor({ state: "visible" });
  seen.token_after_signout = await page.evaluate(() => sessionStorage.getItem("loyalty.adminToken"));
} catch (error) {
  problems.push(String(error && error.message ? error.message : error));
} finally {
  await browser.close();
}
seen.problems = problems;
console.log(JSON.stringify(seen));
process.exit(problems.length ? 1 : 0);
