// A webhook receiver for Herald (docs/hooks.md#webhooks); run by the test suite.
const crypto = require("crypto"), http = require("http");
const secret = process.env.WEBHOOK_SECRET;
http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c)).on("end", () => {
    const body = Buffer.concat(chunks);
    const [t, v1] = (req.headers["herald-signature"] || "t=0,v1=").split(",").map((kv) => kv.split("=")[1]);
    const good = crypto.createHmac("sha256", secret).update(`${t}.`).update(body).digest("hex");
    const ok = v1.length === good.length && crypto.timingSafeEqual(Buffer.from(good), Buffer.from(v1))
      && Math.abs(Date.now() / 1000 - Number(t)) < 300;
    res.writeHead(ok ? 200 : 401).end();
    if (ok) console.log(JSON.stringify(JSON.parse(body))); // your app: dedupe by event.id
  });
}).listen(Number(process.env.PORT || 8000), "127.0.0.1");
