"""The program the ssh device runs on the board to receive files: stdlib only, so a bare Python on the board
is enough, and it checks what it is sent itself, because the board does not trust the sender either."""

# Runs on the device with its Python (stdlib only): reads one JSON header line, then the files' bytes back
# to back; writes them under header.dest, hashes them from disk, and answers with one JSON line. It refuses
# any name that is not a plain relative name inside dest (the device does not trust the sender either).
RECEIVER = r'''
import hashlib, importlib.util, json, os, shutil, sys
inp = sys.stdin.buffer
head = json.loads(inp.readline())
dest = head["dest"]
out = {"ok": True, "hashes": {}, "missing": [], "python": list(sys.version_info[:3])}
current = dest
try:
    os.makedirs(dest, exist_ok=True)
    need = sum(f["bytes"] for f in head["files"])
    free = shutil.disk_usage(dest).free
    if free < need + head.get("margin", 0):
        raise OSError(28, "No space left on device: %d bytes to write, %d free" % (need, free), dest)
    for f in head["files"]:
        name = f["name"]
        parts = name.split("/") if isinstance(name, str) else [""]
        if (not name or name.startswith("/") or "\\" in name or ":" in parts[0]
                or any(p in ("", ".", "..") or any(ord(ch) < 32 for ch in p) for p in parts)):
            raise ValueError("refused file name %r: not a plain relative name inside the folder" % (name,))
    for f in head["files"]:
        current = os.path.join(dest, f["name"])
        os.makedirs(os.path.dirname(current), exist_ok=True)
        left = f["bytes"]
        with open(current, "wb") as fh:
            while left:
                chunk = inp.read(min(left, 1 << 20))
                if not chunk:
                    raise EOFError("the transfer ended early, in " + f["name"])
                fh.write(chunk)
                left -= len(chunk)
    for f in head["files"]:
        h = hashlib.sha256()
        with open(os.path.join(dest, f["name"]), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out["hashes"][f["name"]] = h.hexdigest()
    out["missing"] = [m for m in head.get("modules", []) if importlib.util.find_spec(m) is None]
except OSError as e:
    out = {"ok": False, "errno": e.errno, "error": "%s (writing %s)" % (e.strerror or e, e.filename or current)}
except Exception as e:
    out = {"ok": False, "errno": None, "error": "%s: %s" % (type(e).__name__, e)}
sys.stdout.write(json.dumps(out) + "\n")
'''
