// Clicks Approve on the review page in headless Chromium (playwright-core), with the token
// typed into the page, and prints what the page reported. Run by tests/page.rs.
import { chromium } from 'playwright-core';

const [url, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  const id = await page.getAttribute('button.approve', 'data-id');
  // Without a token first: the API refuses and the page says so.
  await page.click('button.approve');
  await page.waitForFunction(() => document.getElementById('message').textContent.length > 0);
  const refused = await page.textContent('#message');
  await page.fill('#token', token);
  await page.dispatchEvent('#token', 'change');
  await page.evaluate(() => { document.getElementById('message').textContent = ''; });
  await page.click(`button.approve[data-id="${id}"]`);
  await page.waitForFunction(() => document.getElementById('message').textContent.length > 0);
  const approved = await page.textContent('#message');
  console.log(JSON.stringify({ id, refused, approved }));
} finally {
  await browser.close();
}
