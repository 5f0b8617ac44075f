package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false,
	"rewrite testdata/golden/*.golden from the current generator")

// TestRender_golden renders each testdata/golden/NAME.lua and compares it
// with NAME.go.golden; the index of all of them with scripts.go.golden.
func TestRender_golden(t *testing.T) {
	cases := []struct {
		name string // testdata/golden/NAME.lua
		what string
	}{
		{"pair", "two keys, duration argv, array reply of bool, uint64, duration"},
		{"peek", "read-only one key, no argv, string|nil reply: gets a Cache variant"},
		{"count", "scalar string reply, int64 argv"},
		{"two_words", "read-only two keys: no Cache variant; backquote in source"},
	}
	var all []*script
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("testdata", "golden", tc.name+".lua"))
			if err != nil {
				t.Fatal(err)
			}
			s, err := parseScript("scripts/"+tc.name+".lua", tc.name, src)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, s)
			b, err := renderFile(renderScript(s))
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+".go.golden", b)
		})
	}
	t.Run("index", func(t *testing.T) {
		if len(all) != len(cases) {
			t.Fatal("a case above failed")
		}
		sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
		b, err := renderFile(renderIndex(all, "scripts"))
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "scripts.go.golden", b)
	})
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs from the render (-want +got):\n%s", path, diff)
	}
}

// TestParse_badHeaders checks that every malformed header is an error naming
// the file and line, never a panic.
func TestParse_badHeaders(t *testing.T) {
	const missingHint = " (the header is the leading block of \"-- field: value\" lines)"
	const ok = "-- name: x\n-- keys: k\n-- argv: t string\n-- reply: r bool\n"
	cases := []struct {
		name, file, src, want string
	}{
		{"empty file", "x", "", "scripts/x.lua:1: missing header field \"name\"" + missingHint},
		{"no header", "x", "return 1\n", "scripts/x.lua:1: missing header field \"name\"" + missingHint},
		{
			"missing reply", "x", "-- name: x\n-- keys: k\n-- argv:\nreturn 1",
			"scripts/x.lua:1: missing header field \"reply\"" + missingHint,
		},
		{
			"name differs from file", "x", strings.Replace(ok, "name: x", "name: y", 1),
			"scripts/x.lua:1: name \"y\": want \"x\", the file's base name",
		},
		{
			"bad file name", "X-y", ok,
			"scripts/X-y.lua:1: file name \"X-y.lua\": want lower_snake_case ending in .lua",
		},
		{
			"reserved name", "scripts", strings.Replace(ok, "name: x", "name: scripts", 1),
			"scripts/scripts.lua:1: script name \"scripts\" is reserved for the generated index",
		},
		{
			"protocol name", "protocol", strings.Replace(ok, "name: x", "name: protocol", 1),
			"scripts/protocol.lua:1: script name \"protocol\" is reserved " +
				"for the library's klauthed_protocol function",
		},
		{
			"no colon", "x", "-- name: x\n-- keys k\n",
			"scripts/x.lua:2: malformed header line \"-- keys k\": want \"-- field: value\"",
		},
		{
			"no space after dashes", "x", "-- name: x\n--keys: k\n",
			"scripts/x.lua:2: malformed header line \"--keys: k\": want \"-- field: value\"",
		},
		{
			"unknown field", "x", ok + "-- returns: 1\n",
			"scripts/x.lua:5: unknown header field \"returns\" " +
				"(want name, keys, argv, reply, readonly, error)",
		},
		{
			"duplicate field", "x", ok + "-- keys: j\n",
			"scripts/x.lua:5: duplicate header field \"keys\" (first on line 2)",
		},
		{
			"no keys", "x", strings.Replace(ok, "keys: k", "keys:", 1),
			"scripts/x.lua:2: keys: want at least one key name",
		},
		{
			"bad key name", "x", strings.Replace(ok, "keys: k", "keys: k, Lock", 1),
			"scripts/x.lua:2: keys: bad key name \"Lock\": want lower_snake_case",
		},
		{
			"argv without type", "x", strings.Replace(ok, "argv: t string", "argv: t", 1),
			"scripts/x.lua:3: argv: bad item \"t\": want \"name type\"",
		},
		{
			"argv unknown type", "x", strings.Replace(ok, "argv: t string", "argv: t float", 1),
			"scripts/x.lua:3: argv: t: unknown type \"float\" (want string, int64 or duration_ms)",
		},
		{
			"reply empty", "x", strings.Replace(ok, "reply: r bool", "reply:", 1),
			"scripts/x.lua:4: reply: want at least one element",
		},
		{
			"reply unknown type", "x", strings.Replace(ok, "reply: r bool", "reply: r map", 1),
			"scripts/x.lua:4: reply: r: unknown type \"map\" " +
				"(want bool, int64, uint64, duration_ms, string or string|nil)",
		},
		{
			"nullable without flag", "x", strings.Replace(ok, "reply: r bool", "reply: r string|nil", 1),
			"scripts/x.lua:4: reply: r: string|nil needs a \"(flag)\" " +
				"naming the bool set when it is not nil",
		},
		{
			"flag on non-nullable", "x", strings.Replace(ok, "reply: r bool", "reply: r bool (set)", 1),
			"scripts/x.lua:4: reply: bad item \"r bool (set)\": " +
				"only string|nil takes a \"(flag)\" naming its presence bool",
		},
		{
			"duplicate reply field", "x", strings.Replace(ok, "reply: r bool", "reply: r string|nil (r)", 1),
			"scripts/x.lua:4: reply: duplicate field name \"r\"",
		},
		{
			"readonly not bool", "x", ok + "-- readonly: yes\n",
			"scripts/x.lua:5: readonly \"yes\": want true or false",
		},
		{"empty error", "x", ok + "-- error:\n", "scripts/x.lua:5: empty error line"},
		{
			"reserved param", "x", strings.Replace(ok, "argv: t string", "argv: ctx string", 1),
			"scripts/x.lua:4: key or argv name \"ctx\" is reserved in the generated Go code",
		},
		{
			"keyword param", "x", strings.Replace(ok, "keys: k", "keys: type", 1),
			"scripts/x.lua:4: key or argv name \"type\" is reserved in the generated Go code",
		},
		{
			"key and arg collide", "x", strings.Replace(ok, "argv: t string", "argv: k string", 1),
			"scripts/x.lua:4: keys and argv names must be distinct",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseScript("scripts/"+tc.file+".lua", tc.file, []byte(tc.src))
			if err == nil {
				t.Fatalf("parsed %+v, want error %q", s, tc.want)
			}
			var he *headerError
			if !errors.As(err, &he) {
				t.Fatalf("error %T %v, want a *headerError", err, err)
			}
			if diff := cmp.Diff(tc.want, err.Error()); diff != "" {
				t.Fatalf("error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParse_fieldsAndDoc(t *testing.T) {
	src := "-- name: x\n-- keys: lock_key, fence_key\n-- argv: token string, ttl duration_ms\n" +
		"-- reply: token string|nil (held), ttl duration_ms\n-- readonly: true\n" +
		"-- error: ERR one\n-- error: ERR two\n--\n-- Prose line.\n--\n--   indented\n--\nreturn 1\n\n\n"
	s, err := parseScript("scripts/x.lua", "x", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := &script{
		Path: "scripts/x.lua", Name: "x",
		Keys: []string{"lock_key", "fence_key"},
		Argv: []arg{{"token", "string"}, {"ttl", "duration_ms"}},
		Reply: []field{
			{Name: "token", Type: "string|nil", Present: "held"},
			{Name: "ttl", Type: "duration_ms"},
		},
		ReadOnly: true,
		Errors:   []string{"ERR one", "ERR two"},
		Doc:      []string{"Prose line.", "", "  indented"},
		Source:   strings.TrimRight(src, "\n"),
	}
	if diff := cmp.Diff(want, s); diff != "" {
		t.Fatalf("parse (-want +got):\n%s", diff)
	}
}

func TestGoNames(t *testing.T) {
	for _, tc := range []struct{ in, exported, param string }{
		{"lock_key", "LockKey", "lockKey"},
		{"ttl", "TTL", "ttl"},
		{"ttl_ms", "TTLMS", "ttlMS"},
		{"owner_id", "OwnerID", "ownerID"},
		{"fence", "Fence", "fence"},
	} {
		if got := goExported(tc.in); got != tc.exported {
			t.Errorf("goExported(%q) = %q, want %q", tc.in, got, tc.exported)
		}
		if got := goParam(tc.in); got != tc.param {
			t.Errorf("goParam(%q) = %q, want %q", tc.in, got, tc.param)
		}
	}
}

// TestGenerate_committedGenIsFresh renders ../../scripts into memory and
// compares it with the committed ../../gen: run go generate ./... at the
// module root when this fails.
func TestGenerate_committedGenIsFresh(t *testing.T) {
	files, err := generate(filepath.Join("..", "..", "scripts"), "scripts")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join("..", "..", "gen", name))
		if err != nil {
			t.Fatalf("%v (run go generate ./...)", err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("gen/%s is stale; run go generate ./... (-fresh +committed):\n%s", name, diff)
		}
	}
	committed, err := filepath.Glob(filepath.Join("..", "..", "gen", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range committed {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := files[filepath.Base(p)]; !ok && bytes.HasPrefix(b, []byte(generatedPrefix)) {
			t.Errorf("gen/%s is scriptgen output for a script that no longer exists", filepath.Base(p))
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRun_writesOutputRemovesStaleKeepsHandWritten runs the command end to
// end into a temporary directory.
func TestRun_writesOutputRemovesStaleKeepsHandWritten(t *testing.T) {
	dir := t.TempDir()
	scripts, out := filepath.Join(dir, "scripts"), filepath.Join(dir, "gen")
	for _, d := range []string{scripts, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.ReadFile(filepath.Join("testdata", "golden", "peek.lua"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(scripts, "peek.lua"), string(src))
	writeFile(t, filepath.Join(out, "old.go"),
		generatedPrefix+"from scripts/old.lua. DO NOT EDIT.\n\npackage gen\n")
	writeFile(t, filepath.Join(out, "hand.go"), "package gen\n")
	writeFile(t, filepath.Join(out, "peek_test.go"), generatedPrefix+"\npackage gen\n")

	if err := run([]string{"-scripts", scripts, "-out", out}, os.Stderr); err != nil {
		t.Fatal(err)
	}
	var names []string
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	wantFiles := []string{"hand.go", "peek.go", "peek_test.go", "scripts.go"}
	if diff := cmp.Diff(wantFiles, names); diff != "" {
		t.Fatalf("files in -out (-want +got):\n%s", diff)
	}
	peek, err := os.ReadFile(filepath.Join(out, "peek.go"))
	if err != nil {
		t.Fatal(err)
	}
	header := "// Code generated by scriptgen from " + filepath.ToSlash(scripts) +
		"/peek.lua. DO NOT EDIT.\n"
	if !strings.HasPrefix(string(peek), header) {
		t.Fatalf("peek.go header: %q", strings.SplitN(string(peek), "\n", 2)[0])
	}

	// A malformed script stops the run before anything is written.
	writeFile(t, filepath.Join(scripts, "bad.lua"), "-- name: bad\n-- keys k\n")
	writeFile(t, filepath.Join(scripts, "peek.lua"),
		strings.Replace(string(src), "hits int64", "hits uint64", 1))
	err = run([]string{"-scripts", scripts, "-out", out}, os.Stderr)
	want := filepath.ToSlash(scripts) + "/bad.lua:2: malformed header line"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("run with a bad script: %v, want an error starting %q", err, want)
	}
	after, err := os.ReadFile(filepath.Join(out, "peek.go"))
	if err != nil || !bytes.Equal(after, peek) {
		t.Fatalf("peek.go changed by a failed run (err %v)", err)
	}
}

func TestRun_badFlags(t *testing.T) {
	var stderr bytes.Buffer
	if err := run([]string{"-nope"}, &stderr); err == nil {
		t.Fatal("run(-nope) succeeded")
	}
	if err := run([]string{"extra"}, &stderr); err == nil ||
		!strings.Contains(err.Error(), "unexpected arguments") {
		t.Fatalf("run(extra) = %v", err)
	}
	if err := run([]string{"-scripts", t.TempDir(), "-out", t.TempDir()}, &stderr); err == nil ||
		!strings.Contains(err.Error(), "no *.lua files") {
		t.Fatalf("run on an empty dir = %v", err)
	}
}
