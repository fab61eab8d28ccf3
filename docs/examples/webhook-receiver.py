# A webhook receiver for Herald (docs/hooks.md#webhooks); run by the test suite.
import hashlib, hmac, http.server, json, os, time
SECRET = os.environ["WEBHOOK_SECRET"].encode()
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        t, v1 = (kv.split("=", 1)[1] for kv in self.headers.get("Herald-Signature", "t=0,v1=").split(","))
        good = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(good, v1) and abs(time.time() - int(t)) < 300
        self.send_response(200 if ok else 401); self.end_headers()
        if ok: print(json.dumps(json.loads(body)), flush=True)  # your app: dedupe by event["id"]
http.server.HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Hook).serve_forever()
