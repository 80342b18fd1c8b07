// Clicks Approve on the review page in headless Chromium (playwright-core), with the token
// typed into the page, and prints what the page reported. Run by tests/page.rs.
// Mode `open` (reads are anonymous): the first click, without a token, must be refused.
// Mode `shell` (reads need a token): the page is a shell with a token field and no data;
// the token typed loads the page, which then approves with it.
import { chromium } from 'playwright-core';

const [url, token, mode = 'open'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const message = async (page) => {
  await page.waitForFunction(() => document.getElementById('message').textContent.length > 0);
  return page.textContent('#message');
};
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  const out = { mode };
  if (mode === 'shell') {
    out.locked = await page.textContent('#message');
    out.data_before_token = (await page.$('button.approve')) !== null
      || (await page.$('article.workload')) !== null;
    await page.fill('#token', token);
    await page.dispatchEvent('#token', 'change');
    await page.waitForSelector('article.workload', { timeout: 15000 });
    out.token_kept = await page.inputValue('#token');
  } else {
    await page.click('button.approve');
    out.refused = await message(page);
    await page.fill('#token', token);
    await page.dispatchEvent('#token', 'change');
  }
  out.id = await page.getAttribute('button.approve', 'data-id');
  await page.evaluate(() => { document.getElementById('message').textContent = ''; });
  await page.click(`button.approve[data-id="${out.id}"]`);
  out.approved = await message(page);
  out.errors = errors;
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
