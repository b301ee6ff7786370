package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func TestTilePaths(t *testing.T) {
	for _, c := range []struct {
		l    int
		n    int64
		w    int
		want string
	}{
		{0, 5, 256, "/log/tile/0/005"},
		{0, 0, 17, "/log/tile/0/000.p/17"},
		{1, 999, 256, "/log/tile/1/999"},
		{1, 1000, 256, "/log/tile/1/x001/000"},
		{2, 1234067, 3, "/log/tile/2/x001/x234/067.p/3"},
	} {
		if got := hashTilePath(tlog.Tile{H: 8, L: c.l, N: c.n, W: c.w}); got != c.want {
			t.Errorf("hashTilePath(%d,%d,%d) = %q, want %q", c.l, c.n, c.w, got, c.want)
		}
	}
	if got := bundlePath(1234067, 256); got != "/log/tile/entries/x001/x234/067" {
		t.Errorf("bundlePath = %q", got)
	}
}

// The contract's test vectors (shared/testdata/merkle/README.md): RFC 6962
// roots of the eight classic leaves, as computed by Go's tlog.
func TestClassicRoots(t *testing.T) {
	leaves := []string{"", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"}
	roots := []string{
		"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
		"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
		"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
		"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
		"4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
		"76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
		"ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
		"5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
	}
	var stored []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, l := range leaves {
		data, _ := hex.DecodeString(l)
		hs, err := tlog.StoredHashes(int64(i), data, r)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
		root, err := tlog.TreeHash(int64(i+1), r)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(root[:]); got != roots[i] {
			t.Errorf("size %d: root %s, want %s", i+1, got, roots[i])
		}
	}
}

func TestCosignature(t *testing.T) {
	seed := make([]byte, 32)
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	name := "witness.example"
	id := cosigKeyID(name, pub)
	vkey := fmt.Sprintf("%s+%08x+%s", name, id, base64.StdEncoding.EncodeToString(append([]byte{4}, pub...)))
	w := parseWitnessVkey(vkey)

	logSkey, logVkey, _ := note.GenerateKey(strings.NewReader(strings.Repeat("x", 64)), "example.com/log")
	signer, _ := note.NewSigner(logSkey)
	logV, _ := note.NewVerifier(logVkey)
	body := "example.com/log\n5\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"
	msg, _ := note.Sign(&note.Note{Text: body}, signer)
	ts := uint64(time.Now().Unix())
	sig := make([]byte, 12)
	binary.BigEndian.PutUint32(sig, id)
	binary.BigEndian.PutUint64(sig[4:], ts)
	sig = append(sig, ed25519.Sign(priv, []byte(fmt.Sprintf("cosignature/v1\ntime %d\n", ts)+body))...)
	full := string(msg) + "— " + name + " " + base64.StdEncoding.EncodeToString(sig) + "\n"

	cp := openCheckpoint("t", []byte(full), logV, true)
	if n := checkCosignatures("t", cp, []witness{w}, true); n != 1 {
		t.Fatalf("cosignatures = %d, want 1", n)
	}
	// A tampered cosignature must fail.
	sig[20] ^= 1
	bad := string(msg) + "— " + name + " " + base64.StdEncoding.EncodeToString(sig) + "\n"
	cp = openCheckpoint("t", []byte(bad), logV, true)
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Fatal("tampered cosignature accepted")
			}
		}()
		checkCosignatures("t", cp, []witness{w}, true)
	}()
	// A missing cosignature must fail when required.
	cp = openCheckpoint("t", msg, logV, true)
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Fatal("missing cosignature accepted")
			}
		}()
		checkCosignatures("t", cp, []witness{w}, true)
	}()
}
