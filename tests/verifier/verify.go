// Command verify is an independent verifier of a Switchyard transparency log
// (DESIGN.md §2), written against Go's reference code golang.org/x/mod/sumdb/note
// and golang.org/x/mod/sumdb/tlog, so that our Rust implementation is checked by
// code it shares nothing with.
//
// Build (offline, Debian packages golang-go and golang-golang-x-mod-dev):
//
//	GO111MODULE=off GOPATH="$(mktemp -d):/usr/share/gocode" \
//	    go build -o /some/dir/verify tests/verifier/verify.go
//
// (tests/verifier/run.sh does this.)
//
// Usage:
//
//	verify -url http://127.0.0.1:PORT -vkey '<vkey>' [-admin-token T]
//	       [-witness-vkey name+hex+b64 ...] [-proof-file F] [-v]
//
// It checks, against the live server at -url:
//
//	a) GET /log/checkpoint: the signed note verifies with -vkey (note.Open), the
//	   body is "<origin>\n<size>\n<base64 root>\n" with origin = the vkey's name;
//	b) each -witness-vkey (vkey type 0x04): a C2SP cosignature/v1 line of that name
//	   and key ID is present and verifies;
//	c) hash tiles /log/tile/<L>/<N>[.p/<W>] (C2SP tlog-tiles paths, height 8) read
//	   through tlog.TileHashReader, which authenticates every tile against the
//	   checkpoint root; tlog.TreeHash(size) == root; record proofs built from tiles
//	   check for every leaf (size <= -all-limit) or a sample;
//	d) GET /api/v1/log/proof/inclusion?seq=&size= for a sample: fields, leaf hash
//	   equal to the tile's, tlog.CheckRecord against the checkpoint root, and the
//	   embedded checkpoint note;
//	e) GET /api/v1/log/proof/consistency?old=&new=size for old in {1, size/2,
//	   size-1, size}: old_root == tlog.TreeHash(old) from tiles, tlog.CheckTree;
//	f) with -admin-token: entry bundles /log/tile/entries/<N>[.p/<W>] (uint16
//	   big-endian length-prefixed leaves): each tlog.RecordHash(leaf) equals the
//	   level-0 tile hash, the bundle holds exactly W entries, and (strict) the
//	   leaf's JSON "seq" is index+1;
//	g) c2sp.org/tlog-proof@v1 texts: -proof-file F, and (unless -tlog-proofs 0)
//	   the server's own ?format=tlog-proof answers for seq 1 and seq size;
//	h) unless -lenient: content types, Cache-Control of full tiles, and negative
//	   cases (400 for proofs outside the tree, 404 for a tile past the tree,
//	   401/403 for bundles without / with a wrong token).
//
// On success it prints one line
//
//	ok size=<n> root=<b64> inclusion=<k> consistency=<k> tiles=<k> bundles=<k> cosignatures=<k> tlog_proofs=<k> negative=<k>
//
// and exits 0; otherwise it prints "FAIL <check>: <detail>" to stderr and exits 1.
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const tileHeight = 8 // C2SP tlog-tiles: always 256-wide tiles

// ---------------------------------------------------------------------------
// failure reporting

type failure struct {
	check string
	msg   string
}

func fail(check, format string, args ...interface{}) {
	panic(failure{check, fmt.Sprintf(format, args...)})
}

var verbose bool

func logf(format string, args ...interface{}) {
	if verbose {
		fmt.Fprintf(os.Stderr, "verify: "+format+"\n", args...)
	}
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// ---------------------------------------------------------------------------
// HTTP

type client struct {
	base  string
	hc    *http.Client
	token string
}

type response struct {
	status int
	header http.Header
	body   []byte
	url    string
}

func (c *client) get(path string, auth string) response {
	u := c.base + path
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		fail("http", "building request for %s: %v", u, err)
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		fail("http", "GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		fail("http", "GET %s: reading body: %v", u, err)
	}
	return response{resp.StatusCode, resp.Header, body, u}
}

func (r response) snippet() string {
	s := string(r.body)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return strings.TrimSpace(s)
}

func (r response) expect(check string, status int) {
	if r.status != status {
		fail(check, "GET %s: status %d, want %d; body: %s", r.url, r.status, status, r.snippet())
	}
}

func mediaType(h http.Header) string {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

// ---------------------------------------------------------------------------
// tiles

// tilePathN encodes a tile index in the C2SP x-grouped three-digit form:
// 1234067 -> x001/x234/067, 5 -> 005.
func tilePathN(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/", n%1000) + s
	}
	return s
}

func widthSuffix(w int) string {
	if w < 1<<tileHeight {
		return fmt.Sprintf(".p/%d", w)
	}
	return ""
}

// hashTilePath is the C2SP path (not Go's tile/8/L/N form of tlog.Tile.Path).
func hashTilePath(t tlog.Tile) string {
	return fmt.Sprintf("/log/tile/%d/%s%s", t.L, tilePathN(t.N), widthSuffix(t.W))
}

func bundlePath(n int64, w int) string {
	return fmt.Sprintf("/log/tile/entries/%s%s", tilePathN(n), widthSuffix(w))
}

// tileReader implements tlog.TileReader over HTTP, with an in-memory cache.
//
// It also authenticates every full tile against its parent tile itself:
// x/mod's tileHashReader (v0.7 and upstream as of 2026) authenticates child
// tiles in a loop that starts at len(stx) instead of at the number of distinct
// tree-hash tiles, so when several tree-hash subtrees share a tile (e.g. a
// tree of size 600), a requested full tile is returned unauthenticated. The
// chain of parents always ends in a partial (right-edge) tile, and every
// partial tile is among those tileHashReader checks against the tree root in
// the same ReadHashes call, with the same cached bytes.
type tileReader struct {
	c         *client
	strict    bool
	size      int64 // tree size the tiles are read for
	cache     map[string][]byte
	authed    map[string]bool
	fallbacks int
}

func (r *tileReader) Height() int { return tileHeight }

func (r *tileReader) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func (r *tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t.H != tileHeight || t.L < 0 || t.L > 63 || t.W < 1 || t.W > 1<<tileHeight {
			return nil, fmt.Errorf("unexpected tile request %+v", t)
		}
		out[i] = r.fetch(t)
	}
	for _, t := range tiles {
		if t.W == 1<<tileHeight {
			if err := r.authFull(t); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// parentTile is the tile at level t.L+1 holding the hash of full tile t, for
// a tree of size r.size (the same as x/mod's unexported tileParent(t, 1, n)).
func (r *tileReader) parentTile(t tlog.Tile) tlog.Tile {
	p := tlog.Tile{H: tileHeight, L: t.L + 1, N: t.N >> tileHeight, W: 1 << tileHeight}
	max := r.size >> uint((t.L+1)*tileHeight)
	if p.N<<tileHeight+int64(p.W) > max {
		p.W = int(max - p.N<<tileHeight)
	}
	return p
}

// tileRootHash is the Merkle hash of the 2^k hashes in data.
func tileRootHash(data []byte) tlog.Hash {
	if len(data) == tlog.HashSize {
		var h tlog.Hash
		copy(h[:], data)
		return h
	}
	n := len(data) / 2
	return tlog.NodeHash(tileRootHash(data[:n]), tileRootHash(data[n:]))
}

func (r *tileReader) authFull(t tlog.Tile) error {
	path := hashTilePath(t)
	if r.authed[path] {
		return nil
	}
	p := r.parentTile(t)
	if p.W < 1 {
		return fmt.Errorf("full tile %s has no parent in a tree of size %d", path, r.size)
	}
	pd := r.fetch(p)
	if p.W == 1<<tileHeight {
		if err := r.authFull(p); err != nil {
			return err
		}
	}
	want, err := tlog.HashFromTile(p, pd, tlog.StoredHashIndex(p.L*tileHeight, t.N))
	if err != nil {
		return fmt.Errorf("reading hash of %s from parent %s: %v", path, hashTilePath(p), err)
	}
	if got := tileRootHash(r.cache[path]); got != want {
		return fmt.Errorf("tile %s (Merkle hash %s) does not match its entry %s in parent tile %s", path, b64(got), b64(want), hashTilePath(p))
	}
	r.authed[path] = true
	return nil
}

// fetch returns the tile's bytes (exactly t.W hashes), from the cache or the server.
func (r *tileReader) fetch(t tlog.Tile) []byte {
	p := hashTilePath(t)
	if d, ok := r.cache[p]; ok {
		return d
	}
	resp := r.c.get(p, "")
	want := t.W * tlog.HashSize
	if resp.status == http.StatusNotFound && t.W < 1<<tileHeight {
		// C2SP: a log MAY delete a partial tile once the full tile exists;
		// clients MAY fall back to the full tile.
		full := t
		full.W = 1 << tileHeight
		fr := r.c.get(hashTilePath(full), "")
		if fr.status == http.StatusOK && len(fr.body) == full.W*tlog.HashSize {
			fmt.Fprintf(os.Stderr, "verify: note: %s was 404, used the full tile %s\n", resp.url, fr.url)
			r.fallbacks++
			resp = fr
			resp.body = fr.body[:want]
		}
	}
	if resp.status != http.StatusOK {
		fail("tiles", "GET %s: status %d, want 200; body: %s", resp.url, resp.status, resp.snippet())
	}
	if len(resp.body) != want {
		fail("tiles", "GET %s: %d bytes, want %d (%d hashes)", resp.url, len(resp.body), want, t.W)
	}
	if r.strict {
		if mt := mediaType(resp.header); mt != "application/octet-stream" {
			fail("tiles", "GET %s: Content-Type %q, want application/octet-stream", resp.url, resp.header.Get("Content-Type"))
		}
		if t.W == 1<<tileHeight {
			cc := resp.header.Get("Cache-Control")
			if !strings.Contains(cc, "immutable") || !strings.Contains(cc, "max-age=31536000") {
				fail("tiles", "GET %s: full tile Cache-Control %q, want public, max-age=31536000, immutable", resp.url, cc)
			}
		}
	}
	r.cache[p] = resp.body
	return resp.body
}

// ---------------------------------------------------------------------------
// checkpoints and cosignatures

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
	text   string // note text (body), with final newline
	note   *note.Note
}

func decodeHash(check, what, s string) tlog.Hash {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		fail(check, "%s: %q is not a base64 SHA-256 hash", what, s)
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

func b64(h tlog.Hash) string { return base64.StdEncoding.EncodeToString(h[:]) }

func parseDecimal(s string) (int64, bool) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// openCheckpoint verifies a checkpoint note with the log's verifier and parses it.
func openCheckpoint(check string, msg []byte, logV note.Verifier, strict bool) checkpoint {
	n, err := note.Open(msg, note.VerifierList(logV))
	if err != nil {
		var une *note.UnverifiedNoteError
		if errors.As(err, &une) {
			var names []string
			for _, s := range une.Note.UnverifiedSigs {
				names = append(names, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
			fail(check, "checkpoint carries no signature by the log key %s+%08x (signature lines: %s)", logV.Name(), logV.KeyHash(), strings.Join(names, ", "))
		}
		fail(check, "note.Open: %v; note:\n%s", err, msg)
	}
	lines := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	if len(lines) < 3 || (strict && len(lines) != 3) {
		fail(check, "checkpoint body has %d lines, want 3 (origin, size, root): %q", len(lines), n.Text)
	}
	cp := checkpoint{origin: lines[0], text: n.Text, note: n}
	if cp.origin != logV.Name() {
		fail(check, "checkpoint origin %q != vkey name %q", cp.origin, logV.Name())
	}
	size, ok := parseDecimal(lines[1])
	if !ok {
		fail(check, "checkpoint size line %q is not a decimal with no leading zeroes", lines[1])
	}
	cp.size = size
	cp.root = decodeHash(check, "checkpoint root line", lines[2])
	if b64(cp.root) != lines[2] {
		fail(check, "checkpoint root line %q is not canonical base64", lines[2])
	}
	if size == 0 && cp.root != tlog.Hash(sha256.Sum256(nil)) {
		fail(check, "size 0 but root is not SHA-256 of the empty string")
	}
	return cp
}

// witness is a C2SP tlog-cosignature/v1 (Ed25519, type 0x04) cosigner key.
type witness struct {
	vkey  string
	name  string
	keyID uint32
	pub   ed25519.PublicKey
}

func parseWitnessVkey(vkey string) witness {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 || parts[0] == "" || len(parts[1]) != 8 {
		fail("args", "witness vkey %q: want <name>+<8 hex key id>+<base64(0x04 || pubkey)>", vkey)
	}
	id, err := hex.DecodeString(parts[1])
	if err != nil {
		fail("args", "witness vkey %q: bad key id hex", vkey)
	}
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 33 || key[0] != 0x04 {
		fail("args", "witness vkey %q: key must be base64 of 0x04 || 32-byte Ed25519 public key", vkey)
	}
	w := witness{vkey: vkey, name: parts[0], keyID: binary.BigEndian.Uint32(id), pub: ed25519.PublicKey(key[1:])}
	if want := cosigKeyID(w.name, w.pub); want != w.keyID {
		fail("args", "witness vkey %q: key id %08x does not match SHA-256(name || 0x0A || 0x04 || key)[:4] = %08x", vkey, w.keyID, want)
	}
	return w
}

func cosigKeyID(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', 0x04})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// checkCosignatures verifies, for each witness, every signature line of that
// name and key ID (at least one must be present when required) and returns the
// number of valid cosignatures found.
func checkCosignatures(check string, cp checkpoint, ws []witness, required bool) int {
	count := 0
	for _, w := range ws {
		found := 0
		for _, s := range cp.note.UnverifiedSigs {
			if s.Name != w.name {
				continue
			}
			if s.Hash != w.keyID {
				fmt.Fprintf(os.Stderr, "verify: note: ignoring signature line %s+%08x (witness key id is %08x)\n", s.Name, s.Hash, w.keyID)
				continue
			}
			sig, err := base64.StdEncoding.DecodeString(s.Base64)
			if err != nil || len(sig) != 4+8+ed25519.SignatureSize {
				fail(check, "cosignature of %s: %d bytes, want 76 (key ID 4 || timestamp 8 || Ed25519 signature 64)", w.name, len(sig))
			}
			ts := binary.BigEndian.Uint64(sig[4:12])
			if ts == 0 || ts > 1<<63-1 {
				fail(check, "cosignature of %s: invalid timestamp %d", w.name, ts)
			}
			if int64(ts) > time.Now().Unix()+300 {
				fail(check, "cosignature of %s: timestamp %d is in the future", w.name, ts)
			}
			msg := fmt.Sprintf("cosignature/v1\ntime %d\n", ts) + cp.text
			if !ed25519.Verify(w.pub, []byte(msg), sig[12:]) {
				fail(check, "cosignature of %s (key %08x, time %d) does not verify over cosignature/v1 message for checkpoint size %d", w.name, w.keyID, ts, cp.size)
			}
			logf("cosignature of %s at time %d verifies (size %d)", w.name, ts, cp.size)
			found++
		}
		if found == 0 && required {
			var lines []string
			for _, s := range cp.note.UnverifiedSigs {
				lines = append(lines, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
			fail(check, "no cosignature line from witness %s+%08x on checkpoint size %d (other signature lines: %s)", w.name, w.keyID, cp.size, strings.Join(lines, ", "))
		}
		count += found
	}
	return count
}

// ---------------------------------------------------------------------------
// sampling

func sampleIndexes(size int64, allLimit int64, k int) []int64 {
	if size <= 0 {
		return nil
	}
	if size <= allLimit {
		out := make([]int64, size)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	set := map[int64]bool{0: true, size - 1: true}
	for _, b := range []int64{1, 255, 256, 257, 65535, 65536, size / 2, size - 2, size - 257, size - 256} {
		if b >= 0 && b < size {
			set[b] = true
		}
	}
	rng := rand.New(rand.NewSource(size))
	for len(set) < k {
		set[rng.Int63n(size)] = true
	}
	out := make([]int64, 0, len(set))
	for i := range set {
		out = append(out, i)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// ---------------------------------------------------------------------------
// JSON proof responses

type inclusionResp struct {
	Seq        *int64   `json:"seq"`
	LeafIndex  *int64   `json:"leaf_index"`
	TreeSize   *int64   `json:"tree_size"`
	LeafHash   *string  `json:"leaf_hash"`
	RootHash   *string  `json:"root_hash"`
	Proof      []string `json:"proof"`
	Checkpoint *string  `json:"checkpoint"`
}

type consistencyResp struct {
	OldSize *int64   `json:"old_size"`
	NewSize *int64   `json:"new_size"`
	OldRoot *string  `json:"old_root"`
	NewRoot *string  `json:"new_root"`
	Proof   []string `json:"proof"`
}

func decodeJSON(check string, r response, v interface{}, strict bool) {
	r.expect(check, http.StatusOK)
	if strict && mediaType(r.header) != "application/json" {
		fail(check, "GET %s: Content-Type %q, want application/json", r.url, r.header.Get("Content-Type"))
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		fail(check, "GET %s: bad JSON: %v; body: %s", r.url, err, r.snippet())
	}
}

func needInt(check, url, field string, p *int64, want int64) {
	if p == nil {
		fail(check, "GET %s: field %q missing", url, field)
	}
	if *p != want {
		fail(check, "GET %s: %s = %d, want %d", url, field, *p, want)
	}
}

func needHash(check, url, field string, p *string) tlog.Hash {
	if p == nil {
		fail(check, "GET %s: field %q missing", url, field)
	}
	return decodeHash(check, "GET "+url+": "+field, *p)
}

func decodeProof(check, url string, lines []string) []tlog.Hash {
	if lines == nil {
		fail(check, "GET %s: field \"proof\" missing", url)
	}
	if len(lines) > 63 {
		fail(check, "GET %s: proof has %d hashes (max 63)", url, len(lines))
	}
	out := make([]tlog.Hash, len(lines))
	for i, s := range lines {
		out[i] = decodeHash(check, fmt.Sprintf("GET %s: proof[%d]", url, i), s)
	}
	return out
}

// ---------------------------------------------------------------------------
// the verifier

type verifier struct {
	c         *client
	strict    bool
	logV      note.Verifier
	witnesses []witness
	cp        checkpoint
	tr        *tileReader
	hr        tlog.HashReader
}

func (v *verifier) leafHash(check string, i int64) tlog.Hash {
	hs, err := v.hr.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
	if err != nil {
		fail(check, "reading leaf hash %d from tiles (authenticated against root %s, size %d): %v", i, b64(v.cp.root), v.cp.size, err)
	}
	return hs[0]
}

func (v *verifier) treeHash(check string, n int64) tlog.Hash {
	h, err := tlog.TreeHash(n, v.hr)
	if err != nil {
		fail(check, "tlog.TreeHash(%d) from tiles: %v", n, err)
	}
	return h
}

// checkTiles: tree hash and record proofs from tiles.
func (v *verifier) checkTiles(idx []int64) {
	size, root := v.cp.size, v.cp.root
	th := v.treeHash("tiles", size)
	if th != root {
		fail("tiles", "tlog.TreeHash(%d) from tiles = %s, checkpoint root = %s", size, b64(th), b64(root))
	}
	for _, i := range idx {
		lh := v.leafHash("tiles", i)
		p, err := tlog.ProveRecord(size, i, v.hr)
		if err != nil {
			fail("tiles", "tlog.ProveRecord(%d, %d) from tiles: %v", size, i, err)
		}
		if err := tlog.CheckRecord(p, size, root, i, lh); err != nil {
			fail("tiles", "tlog.CheckRecord for leaf %d in tree %d: %v", i, size, err)
		}
	}
	logf("tiles: tree hash and %d record proofs check (%d tiles fetched)", len(idx), len(v.tr.cache))
}

func (v *verifier) checkInclusion(idx []int64) int {
	size, root := v.cp.size, v.cp.root
	n := 0
	for _, i := range idx {
		seq := i + 1
		r := v.c.get(fmt.Sprintf("/api/v1/log/proof/inclusion?seq=%d&size=%d", seq, size), "")
		var ir inclusionResp
		decodeJSON("inclusion", r, &ir, v.strict)
		needInt("inclusion", r.url, "seq", ir.Seq, seq)
		needInt("inclusion", r.url, "leaf_index", ir.LeafIndex, i)
		needInt("inclusion", r.url, "tree_size", ir.TreeSize, size)
		if rh := needHash("inclusion", r.url, "root_hash", ir.RootHash); rh != root {
			fail("inclusion", "GET %s: root_hash %s != checkpoint root %s", r.url, b64(rh), b64(root))
		}
		lh := needHash("inclusion", r.url, "leaf_hash", ir.LeafHash)
		if th := v.leafHash("inclusion", i); th != lh {
			fail("inclusion", "GET %s: leaf_hash %s != level-0 tile hash %s of leaf %d", r.url, b64(lh), b64(th), i)
		}
		proof := decodeProof("inclusion", r.url, ir.Proof)
		if err := tlog.CheckRecord(tlog.RecordProof(proof), size, root, i, lh); err != nil {
			fail("inclusion", "GET %s: tlog.CheckRecord(proof, %d, root, %d, leaf_hash): %v", r.url, size, i, err)
		}
		if ir.Checkpoint == nil {
			fail("inclusion", "GET %s: \"checkpoint\" is null although size %d is the published checkpoint's size", r.url, size)
		}
		cp := openCheckpoint("inclusion", []byte(*ir.Checkpoint), v.logV, v.strict)
		if cp.size != size || cp.root != root {
			fail("inclusion", "GET %s: embedded checkpoint (size %d, root %s) differs from /log/checkpoint (size %d, root %s)", r.url, cp.size, b64(cp.root), size, b64(root))
		}
		n++
	}
	logf("inclusion: %d proofs check", n)
	return n
}

func (v *verifier) consistency(check string, old, new int64, newRoot tlog.Hash, oldRoot *tlog.Hash) {
	r := v.c.get(fmt.Sprintf("/api/v1/log/proof/consistency?old=%d&new=%d", old, new), "")
	var cr consistencyResp
	decodeJSON(check, r, &cr, v.strict)
	needInt(check, r.url, "old_size", cr.OldSize, old)
	needInt(check, r.url, "new_size", cr.NewSize, new)
	nr := needHash(check, r.url, "new_root", cr.NewRoot)
	if nr != newRoot {
		fail(check, "GET %s: new_root %s != %s", r.url, b64(nr), b64(newRoot))
	}
	or := needHash(check, r.url, "old_root", cr.OldRoot)
	if oldRoot != nil && or != *oldRoot {
		fail(check, "GET %s: old_root %s != tree hash %s computed from tiles", r.url, b64(or), b64(*oldRoot))
	}
	proof := decodeProof(check, r.url, cr.Proof)
	if err := tlog.CheckTree(tlog.TreeProof(proof), new, newRoot, old, or); err != nil {
		fail(check, "GET %s: tlog.CheckTree(proof, %d, new_root, %d, old_root): %v", r.url, new, old, err)
	}
}

func (v *verifier) checkConsistency() int {
	size := v.cp.size
	set := map[int64]bool{}
	for _, s := range []int64{1, size / 2, size - 1, size} {
		if s >= 1 && s <= size {
			set[s] = true
		}
	}
	olds := make([]int64, 0, len(set))
	for s := range set {
		olds = append(olds, s)
	}
	sort.Slice(olds, func(i, j int) bool { return olds[i] < olds[j] })
	for _, s1 := range olds {
		oldRoot := v.treeHash("consistency", s1)
		v.consistency("consistency", s1, size, v.cp.root, &oldRoot)
	}
	logf("consistency: %d proofs check (old sizes %v)", len(olds), olds)
	return len(olds)
}

func (v *verifier) checkBundles(idx []int64, allLimit int64) int {
	size := v.cp.size
	nb := (size + 255) / 256
	var ns []int64
	if nb <= allLimit/256+1 {
		for n := int64(0); n < nb; n++ {
			ns = append(ns, n)
		}
	} else {
		seen := map[int64]bool{}
		for _, i := range idx {
			if !seen[i/256] {
				seen[i/256] = true
				ns = append(ns, i/256)
			}
		}
	}
	for _, n := range ns {
		w := 256
		if n == size/256 {
			w = int(size % 256)
		}
		p := bundlePath(n, w)
		r := v.c.get(p, v.c.token)
		usedFull := false
		if r.status == http.StatusNotFound && w < 256 {
			fr := v.c.get(bundlePath(n, 256), v.c.token)
			if fr.status == http.StatusOK {
				fmt.Fprintf(os.Stderr, "verify: note: %s was 404, used the full bundle %s\n", r.url, fr.url)
				r = fr
				usedFull = true
			}
		}
		r.expect("bundles", http.StatusOK)
		if v.strict && mediaType(r.header) != "application/octet-stream" {
			fail("bundles", "GET %s: Content-Type %q, want application/octet-stream", r.url, r.header.Get("Content-Type"))
		}
		var leaves [][]byte
		b := r.body
		for len(b) > 0 && len(leaves) < w {
			if len(b) < 2 {
				fail("bundles", "GET %s: truncated length prefix after %d entries", r.url, len(leaves))
			}
			l := int(binary.BigEndian.Uint16(b))
			if len(b) < 2+l {
				fail("bundles", "GET %s: entry %d declares %d bytes, only %d left", r.url, len(leaves), l, len(b)-2)
			}
			leaves = append(leaves, b[2:2+l])
			b = b[2+l:]
		}
		if len(leaves) != w || (len(b) != 0 && !usedFull) {
			fail("bundles", "GET %s: %d entries and %d trailing bytes, want exactly %d entries", r.url, len(leaves), len(b), w)
		}
		stored := make([]int64, w)
		for j := range stored {
			stored[j] = tlog.StoredHashIndex(0, n*256+int64(j))
		}
		hs, err := v.hr.ReadHashes(stored)
		if err != nil {
			fail("bundles", "reading level-0 hashes for bundle %d from tiles: %v", n, err)
		}
		for j, leaf := range leaves {
			idx := n*256 + int64(j)
			if rh := tlog.RecordHash(leaf); rh != hs[j] {
				fail("bundles", "GET %s: entry %d (leaf index %d): RecordHash %s != level-0 tile hash %s", r.url, j, idx, b64(rh), b64(hs[j]))
			}
			if v.strict {
				var obj map[string]json.RawMessage
				if err := json.Unmarshal(leaf, &obj); err != nil {
					fail("bundles", "GET %s: entry %d (leaf index %d) is not a JSON object: %v", r.url, j, idx, err)
				}
				if s := strings.TrimSpace(string(obj["seq"])); s != strconv.FormatInt(idx+1, 10) {
					fail("bundles", "GET %s: entry %d (leaf index %d) has \"seq\": %s, want %d", r.url, j, idx, s, idx+1)
				}
				for _, k := range []string{"prev_hash", "entry_hash"} {
					if _, ok := obj[k]; ok {
						fail("bundles", "GET %s: entry %d (leaf index %d) contains %q, which the leaf must not", r.url, j, idx, k)
					}
				}
			}
		}
	}
	logf("bundles: %d entry bundles check", len(ns))
	return len(ns)
}

// checkTlogProof verifies a c2sp.org/tlog-proof@v1 text. wantIndex < 0 means any.
// It returns the number of valid witness cosignatures on its checkpoint.
func (v *verifier) checkTlogProof(check string, text []byte, wantIndex int64, requireCosig bool) int {
	s := string(text)
	next := func() string {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			fail(check, "tlog-proof: unterminated line %q", s)
		}
		line := s[:i]
		s = s[i+1:]
		return line
	}
	if l := next(); l != "c2sp.org/tlog-proof@v1" {
		fail(check, "tlog-proof: first line %q, want c2sp.org/tlog-proof@v1", l)
	}
	l := next()
	if strings.HasPrefix(l, "extra ") {
		if _, err := base64.StdEncoding.DecodeString(l[len("extra "):]); err != nil {
			fail(check, "tlog-proof: extra line is not base64: %q", l)
		}
		l = next()
	}
	if !strings.HasPrefix(l, "index ") {
		fail(check, "tlog-proof: want \"index <n>\" line, got %q", l)
	}
	index, ok := parseDecimal(l[len("index "):])
	if !ok {
		fail(check, "tlog-proof: bad index line %q", l)
	}
	if wantIndex >= 0 && index != wantIndex {
		fail(check, "tlog-proof: index %d, want %d", index, wantIndex)
	}
	var proof tlog.RecordProof
	for {
		l = next()
		if l == "" {
			break
		}
		if len(proof) >= 63 {
			fail(check, "tlog-proof: more than 63 proof lines")
		}
		proof = append(proof, decodeHash(check, "tlog-proof: proof line", l))
	}
	cp := openCheckpoint(check, []byte(s), v.logV, v.strict)
	ncos := checkCosignatures(check, cp, v.witnesses, requireCosig)
	if index >= cp.size {
		fail(check, "tlog-proof: index %d not below its checkpoint's size %d", index, cp.size)
	}
	if index >= v.cp.size {
		fail(check, "tlog-proof: index %d is past the verified checkpoint (size %d); cannot obtain its leaf hash", index, v.cp.size)
	}
	lh := v.leafHash(check, index)
	if err := tlog.CheckRecord(proof, cp.size, cp.root, index, lh); err != nil {
		fail(check, "tlog-proof: tlog.CheckRecord(proof, %d, root %s, %d, leaf hash from tiles): %v", cp.size, b64(cp.root), index, err)
	}
	// Tie the proof's checkpoint to the one verified above.
	switch {
	case cp.size == v.cp.size:
		if cp.root != v.cp.root {
			fail(check, "tlog-proof: checkpoint size %d has root %s, /log/checkpoint has %s (fork!)", cp.size, b64(cp.root), b64(v.cp.root))
		}
	case cp.size < v.cp.size:
		if th := v.treeHash(check, cp.size); th != cp.root {
			fail(check, "tlog-proof: checkpoint size %d root %s != tree hash %s from tiles (fork!)", cp.size, b64(cp.root), b64(th))
		}
	default:
		v.consistency(check, v.cp.size, cp.size, cp.root, &v.cp.root)
	}
	logf("tlog-proof: index %d in checkpoint size %d verifies (%d proof lines, %d cosignatures)", index, cp.size, len(proof), ncos)
	return ncos
}

func (v *verifier) checkNegative() int {
	size := v.cp.size
	n := 0
	expectErr := func(path string, auth string, statuses []int, errcode string) {
		r := v.c.get(path, auth)
		okStatus := false
		for _, s := range statuses {
			okStatus = okStatus || r.status == s
		}
		if !okStatus {
			fail("negative", "GET %s: status %d, want %v; body: %s", r.url, r.status, statuses, r.snippet())
		}
		if errcode != "" {
			var e struct {
				Errcode string `json:"errcode"`
				Error   string `json:"error"`
			}
			if err := json.Unmarshal(r.body, &e); err != nil || e.Errcode != errcode {
				fail("negative", "GET %s: body %s, want {\"errcode\": %q, \"error\": ...}", r.url, r.snippet(), errcode)
			}
		}
		n++
	}
	bad := []int{http.StatusBadRequest}
	expectErr("/api/v1/log/proof/inclusion?seq=0", "", bad, "SY_INVALID_PARAM")
	if size >= 1 {
		expectErr(fmt.Sprintf("/api/v1/log/proof/inclusion?seq=%d&size=%d", size+1, size), "", bad, "SY_INVALID_PARAM")
		expectErr(fmt.Sprintf("/api/v1/log/proof/inclusion?seq=1&size=%d", int64(1)<<52), "", bad, "SY_INVALID_PARAM")
		expectErr(fmt.Sprintf("/api/v1/log/proof/consistency?old=0&new=%d", size), "", bad, "SY_INVALID_PARAM")
		expectErr(fmt.Sprintf("/api/v1/log/proof/consistency?old=1&new=%d", int64(1)<<52), "", bad, "SY_INVALID_PARAM")
	}
	if size >= 2 {
		expectErr(fmt.Sprintf("/api/v1/log/proof/consistency?old=%d&new=1", size), "", bad, "SY_INVALID_PARAM")
	}
	expectErr("/log/tile/0/x999/x999/999", "", []int{http.StatusNotFound}, "SY_NOT_FOUND")
	if size >= 1 {
		w := int(size % 256)
		if w == 0 {
			w = 256
		}
		p := bundlePath((size-1)/256, w)
		expectErr(p, "", []int{http.StatusUnauthorized, http.StatusForbidden}, "")
		expectErr(p, "definitely-not-the-admin-token", []int{http.StatusUnauthorized, http.StatusForbidden}, "")
	}
	logf("negative: %d error cases answer as specified", n)
	return n
}

func main() {
	var (
		base         = flag.String("url", "", "server base URL, e.g. http://127.0.0.1:8448")
		vkey         = flag.String("vkey", "", "the log's verifier key <server>/log+<hex id>+<base64(0x01||pubkey)>")
		adminToken   = flag.String("admin-token", "", "admin token: also verify entry bundles")
		proofFile    = flag.String("proof-file", "", "a c2sp.org/tlog-proof@v1 file to verify")
		allLimit     = flag.Int64("all-limit", 2000, "check every leaf from tiles (and every bundle) up to this size; sample above")
		samples      = flag.Int("samples", 200, "number of leaves sampled for tile checks above -all-limit and for inclusion proofs over HTTP")
		tlogProofs   = flag.Int("tlog-proofs", 2, "fetch and verify this many ?format=tlog-proof answers (seq 1 and seq size); 0 = none")
		requireProof = flag.Bool("require-proof-cosignatures", false, "require a cosignature from every -witness-vkey on tlog-proof checkpoints too")
		lenient      = flag.Bool("lenient", false, "skip header checks, negative cases and leaf JSON checks")
		timeout      = flag.Duration("timeout", 30*time.Second, "per-request timeout")
		witnessVkeys multiFlag
	)
	flag.Var(&witnessVkeys, "witness-vkey", "witness cosigner vkey <name>+<hex id>+<base64(0x04||pubkey)> (repeatable); its cosignature must be on the checkpoint")
	flag.BoolVar(&verbose, "v", false, "verbose progress on stderr")
	flag.Parse()

	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(failure); ok {
				fmt.Fprintf(os.Stderr, "FAIL %s: %s\n", f.check, f.msg)
				os.Exit(1)
			}
			panic(r)
		}
	}()

	if *base == "" || *vkey == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: verify -url http://127.0.0.1:PORT -vkey VKEY [-admin-token T] [-witness-vkey VKEY ...] [-proof-file F] [-v]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	if _, err := url.Parse(*base); err != nil {
		fail("args", "bad -url: %v", err)
	}
	logV, err := note.NewVerifier(*vkey)
	if err != nil {
		fail("args", "-vkey %q: note.NewVerifier: %v", *vkey, err)
	}
	var ws []witness
	for _, wv := range witnessVkeys {
		ws = append(ws, parseWitnessVkey(wv))
	}

	c := &client{base: strings.TrimSuffix(*base, "/"), hc: &http.Client{Timeout: *timeout}, token: *adminToken}
	v := &verifier{c: c, strict: !*lenient, logV: logV, witnesses: ws}

	// a) checkpoint
	r := c.get("/log/checkpoint", "")
	r.expect("checkpoint", http.StatusOK)
	if v.strict {
		ct := strings.ToLower(strings.ReplaceAll(r.header.Get("Content-Type"), " ", ""))
		if ct != "text/plain;charset=utf-8" {
			fail("checkpoint", "GET %s: Content-Type %q, want text/plain; charset=utf-8", r.url, r.header.Get("Content-Type"))
		}
	}
	v.cp = openCheckpoint("checkpoint", r.body, logV, v.strict)
	size, root := v.cp.size, v.cp.root
	fmt.Fprintf(os.Stderr, "verify: checkpoint origin=%s size=%d root=%s signatures=%d+%d\n", v.cp.origin, size, b64(root), len(v.cp.note.Sigs), len(v.cp.note.UnverifiedSigs))

	// b) cosignatures
	cosigs := checkCosignatures("cosignature", v.cp, ws, true)

	inclusion, consistency, bundles, tproofs, negative := 0, 0, 0, 0, 0
	v.tr = &tileReader{c: c, strict: v.strict, size: size, cache: map[string][]byte{}, authed: map[string]bool{}}
	if size > 0 {
		v.hr = tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, v.tr)

		// c) tiles
		tileIdx := sampleIndexes(size, *allLimit, *samples)
		v.checkTiles(tileIdx)

		// d) inclusion proofs
		inclIdx := sampleIndexes(size, int64(*samples), *samples)
		inclusion = v.checkInclusion(inclIdx)

		// e) consistency proofs
		consistency = v.checkConsistency()

		// f) entry bundles
		if *adminToken != "" {
			bundles = v.checkBundles(tileIdx, *allLimit)
		}

		// g) tlog-proof texts
		seqs := []int64{1, size}
		if *tlogProofs < len(seqs) {
			seqs = seqs[:*tlogProofs]
		}
		done := map[int64]bool{}
		for _, seq := range seqs {
			if done[seq] {
				continue
			}
			done[seq] = true
			r := c.get(fmt.Sprintf("/api/v1/log/proof/inclusion?seq=%d&format=tlog-proof", seq), "")
			r.expect("tlog-proof", http.StatusOK)
			v.checkTlogProof("tlog-proof", r.body, seq-1, *requireProof)
			tproofs++
		}
	} else {
		v.hr = tlog.HashReaderFunc(func([]int64) ([]tlog.Hash, error) { return nil, errors.New("empty tree") })
	}
	if *proofFile != "" {
		text, err := os.ReadFile(*proofFile)
		if err != nil {
			fail("proof-file", "%v", err)
		}
		v.checkTlogProof("proof-file", text, -1, *requireProof)
		tproofs++
	}

	// h) negative cases
	if v.strict {
		negative = v.checkNegative()
	}

	fmt.Printf("ok size=%d root=%s inclusion=%d consistency=%d tiles=%d bundles=%d cosignatures=%d tlog_proofs=%d negative=%d\n",
		size, b64(root), inclusion, consistency, len(v.tr.cache), bundles, cosigs, tproofs, negative)
}
