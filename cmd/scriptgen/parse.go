package main

import (
	"fmt"
	"go/token"
	"strings"
)

// A script is one parsed scripts/*.lua file.
type script struct {
	Path     string   // display path, e.g. "scripts/acquire.lua"
	Name     string   // "acquire"; equals the file's base name
	Keys     []string // KEYS names in order, snake_case
	Argv     []arg    // ARGV in order
	Reply    []field  // reply elements in order; one element means a scalar reply
	ReadOnly bool     // safe for EVAL_RO / EVALSHA_RO
	Errors   []string // error replies, one per "error:" line
	Doc      []string // the prose after the fields, comment markers removed
	Source   string   // the file without its trailing newlines
}

// An arg is one ARGV entry: "ttl duration_ms".
type arg struct {
	Name string
	Type string // one of argTypes
}

// A field is one reply element: "fence uint64" or "token string|nil (held)".
type field struct {
	Name    string
	Type    string // one of replyTypes
	Present string // for "string|nil": the bool field set when the element is not nil
}

var argTypes = map[string]bool{"string": true, "int64": true, "duration_ms": true}

var replyTypes = map[string]bool{
	"bool": true, "int64": true, "uint64": true, "duration_ms": true,
	"string": true, "string|nil": true,
}

// reserved are identifiers the generated wrappers use themselves, so no
// KEYS or ARGV name may become them.
var reserved = map[string]bool{
	"ctx": true, "c": true, "keys": true, "args": true, "res": true,
	"clientTTL": true, "r": true, "err": true, "vals": true, "msg": true,
	"keyList": true, "argList": true, "batch": true, "pending": true,
}

// headerError is a malformed header, reported as "path:line: msg".
type headerError struct {
	Path string
	Line int
	Msg  string
}

func (e *headerError) Error() string { return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg) }

// parseScript parses the header of one script. path is the display path used
// in errors and generated comments; name is the file's base name without
// ".lua". It never panics: every malformed header is a *headerError.
func parseScript(path, name string, src []byte) (*script, error) {
	text := strings.ReplaceAll(string(src), "\r\n", "\n")
	s := &script{Path: path, Source: strings.TrimRight(string(src), "\n")}
	fail := func(line int, format string, a ...any) (*script, error) {
		return nil, &headerError{Path: path, Line: line, Msg: fmt.Sprintf(format, a...)}
	}
	if !validName(name) {
		return fail(1, "file name %q: want lower_snake_case ending in .lua", name+".lua")
	}
	if name == "scripts" {
		return fail(1, "script name %q is reserved for the generated index", name)
	}
	if functionPrefix+name == protocolFunction {
		return fail(1, "script name %q is reserved for the library's %s function", name, protocolFunction)
	}
	lines := strings.Split(text, "\n")
	seen := map[string]int{}
	inFields := true
	for i, line := range lines {
		n := i + 1
		if !strings.HasPrefix(line, "--") {
			break
		}
		body := strings.TrimPrefix(line, "--")
		if !inFields {
			s.Doc = append(s.Doc, strings.TrimPrefix(body, " "))
			continue
		}
		if strings.TrimSpace(body) == "" {
			inFields = false
			continue
		}
		key, value, ok := strings.Cut(body, ":")
		key = strings.TrimSpace(key)
		value = strings.TrimSpace(value)
		if !ok || !strings.HasPrefix(body, " ") || !validName(key) {
			return fail(n, "malformed header line %q: want \"-- field: value\"", line)
		}
		if prev, dup := seen[key]; dup && key != "error" {
			return fail(n, "duplicate header field %q (first on line %d)", key, prev)
		}
		seen[key] = n
		var err error
		switch key {
		case "name":
			if value != name {
				err = fmt.Errorf("name %q: want %q, the file's base name", value, name)
			}
			s.Name = value
		case "keys":
			s.Keys, err = parseKeys(value)
		case "argv":
			s.Argv, err = parseArgv(value)
		case "reply":
			s.Reply, err = parseReply(value)
		case "readonly":
			switch value {
			case "true":
				s.ReadOnly = true
			case "false":
			default:
				err = fmt.Errorf("readonly %q: want true or false", value)
			}
		case "error":
			if value == "" {
				err = fmt.Errorf("empty error line")
			}
			s.Errors = append(s.Errors, value)
		default:
			err = fmt.Errorf("unknown header field %q (want name, keys, argv, reply, readonly, error)", key)
		}
		if err != nil {
			return fail(n, "%v", err)
		}
	}
	for _, f := range []string{"name", "keys", "argv", "reply"} {
		if _, ok := seen[f]; !ok {
			return fail(1, "missing header field %q "+
				"(the header is the leading block of \"-- field: value\" lines)", f)
		}
	}
	if err := checkNames(s); err != nil {
		return fail(seen["reply"], "%v", err)
	}
	for len(s.Doc) > 0 && strings.TrimSpace(s.Doc[len(s.Doc)-1]) == "" {
		s.Doc = s.Doc[:len(s.Doc)-1]
	}
	return s, nil
}

func parseKeys(v string) ([]string, error) {
	if v == "" {
		return nil, fmt.Errorf("keys: want at least one key name")
	}
	var keys []string
	for _, k := range strings.Split(v, ",") {
		k = strings.TrimSpace(k)
		if !validName(k) {
			return nil, fmt.Errorf("keys: bad key name %q: want lower_snake_case", k)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func parseArgv(v string) ([]arg, error) {
	if v == "" {
		return nil, nil
	}
	var args []arg
	for _, item := range strings.Split(v, ",") {
		f := strings.Fields(item)
		if len(f) != 2 || !validName(f[0]) {
			return nil, fmt.Errorf("argv: bad item %q: want \"name type\"", strings.TrimSpace(item))
		}
		if !argTypes[f[1]] {
			return nil, fmt.Errorf("argv: %s: unknown type %q (want string, int64 or duration_ms)",
				f[0], f[1])
		}
		args = append(args, arg{Name: f[0], Type: f[1]})
	}
	return args, nil
}

func parseReply(v string) ([]field, error) {
	if v == "" {
		return nil, fmt.Errorf("reply: want at least one element")
	}
	var fields []field
	for _, item := range strings.Split(v, ",") {
		f := strings.Fields(item)
		if len(f) < 2 || len(f) > 3 || !validName(f[0]) {
			return nil, fmt.Errorf("reply: bad item %q: want \"name type\" or \"name string|nil (flag)\"",
				strings.TrimSpace(item))
		}
		if !replyTypes[f[1]] {
			return nil, fmt.Errorf("reply: %s: unknown type %q "+
				"(want bool, int64, uint64, duration_ms, string or string|nil)", f[0], f[1])
		}
		fd := field{Name: f[0], Type: f[1]}
		if len(f) == 3 {
			flag := strings.TrimSuffix(strings.TrimPrefix(f[2], "("), ")")
			if f[1] != "string|nil" || !strings.HasPrefix(f[2], "(") ||
				!strings.HasSuffix(f[2], ")") || !validName(flag) {
				return nil, fmt.Errorf("reply: bad item %q: "+
					"only string|nil takes a \"(flag)\" naming its presence bool", strings.TrimSpace(item))
			}
			fd.Present = flag
		} else if f[1] == "string|nil" {
			return nil, fmt.Errorf("reply: %s: string|nil needs a \"(flag)\" "+
				"naming the bool set when it is not nil", f[0])
		}
		fields = append(fields, fd)
	}
	return fields, nil
}

// checkNames rejects names that would collide in the generated Go code.
func checkNames(s *script) error {
	params := map[string]bool{}
	for _, k := range s.Keys {
		params[goParam(k)] = true
	}
	for _, a := range s.Argv {
		params[goParam(a.Name)] = true
	}
	if len(params) != len(s.Keys)+len(s.Argv) {
		return fmt.Errorf("keys and argv names must be distinct")
	}
	for p := range params {
		if reserved[p] || token.IsKeyword(p) {
			return fmt.Errorf("key or argv name %q is reserved in the generated Go code", p)
		}
	}
	fields := map[string]bool{}
	for _, f := range s.Reply {
		for _, n := range []string{f.Name, f.Present} {
			if n == "" {
				continue
			}
			if fields[goExported(n)] {
				return fmt.Errorf("reply: duplicate field name %q", n)
			}
			fields[goExported(n)] = true
		}
	}
	return nil
}

// validName reports whether s is lower_snake_case: [a-z][a-z0-9_]*.
func validName(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// initialisms are the snake_case words written in capitals in Go names.
var initialisms = map[string]string{
	"ttl": "TTL", "id": "ID", "ms": "MS", "sha1": "SHA1", "url": "URL",
	"ip": "IP", "json": "JSON", "api": "API", "uuid": "UUID",
}

// goExported turns lower_snake_case into an exported Go name: fence_key ->
// FenceKey, ttl -> TTL.
func goExported(s string) string {
	var b strings.Builder
	for _, w := range strings.Split(s, "_") {
		if w == "" {
			continue
		}
		if up, ok := initialisms[w]; ok {
			b.WriteString(up)
			continue
		}
		b.WriteString(strings.ToUpper(w[:1]) + w[1:])
	}
	return b.String()
}

// goParam turns lower_snake_case into an unexported Go name: lock_key ->
// lockKey, ttl -> ttl, ttl_ms -> ttlMS.
func goParam(s string) string {
	e := goExported(s)
	first, _, _ := strings.Cut(s, "_")
	if up, ok := initialisms[first]; ok {
		return strings.ToLower(up) + e[len(up):]
	}
	return strings.ToLower(e[:1]) + e[1:]
}
