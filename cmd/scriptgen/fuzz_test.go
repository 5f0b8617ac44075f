package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseScript feeds arbitrary file names and contents to the header
// parser. It must never panic; every error must be a *headerError naming
// the display path and a line that exists in the file (file:line); every
// success must give a script whose name is the file's and that has the
// required fields.
func FuzzParseScript(f *testing.F) {
	paths, err := filepath.Glob(filepath.Join("..", "..", "scripts", "*.lua"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no scripts to seed from: %v", err)
	}
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(strings.TrimSuffix(filepath.Base(p), ".lua"), src)
	}
	f.Add("x", []byte("-- name: x\n-- keys: k\n-- argv:\n-- reply: ok bool\n"))
	f.Add("x", []byte("-- name: x\r\n-- keys: k\r\n"))
	f.Add("x", []byte("--name:x\n"))
	f.Add("x", []byte("-- reply: a string|nil (\n"))
	f.Add("Bad-Name", []byte(""))
	f.Add("scripts", []byte("-- name: scripts\n"))
	f.Fuzz(func(t *testing.T, name string, src []byte) {
		const path = "scripts/fuzz.lua"
		s, err := parseScript(path, name, src)
		if err != nil {
			var he *headerError
			if !errors.As(err, &he) {
				t.Fatalf("error %v (%T) is not a *headerError", err, err)
			}
			lines := strings.Count(strings.ReplaceAll(string(src), "\r\n", "\n"), "\n") + 1
			if he.Path != path || he.Line < 1 || he.Line > lines {
				t.Fatalf("error %q names %s:%d; want %s and a line in 1..%d",
					err, he.Path, he.Line, path, lines)
			}
			if want := path + ":" + strconv.Itoa(he.Line) + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			return
		}
		if s.Name != name || len(s.Keys) == 0 || s.Reply == nil {
			t.Fatalf("parsed %+v from a header that should have failed", s)
		}
	})
}
