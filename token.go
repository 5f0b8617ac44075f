package lock

import (
	"crypto/rand"
	"encoding/base64"
)

// Token identifies one acquisition. It is 128 bits from crypto/rand written
// as 22 characters of unpadded URL-safe base64, so it is safe in any text
// protocol, log line or Redis argument.
type Token string

// TokenLen is the length in bytes of a token made by NewToken.
const TokenLen = 22

// NewToken returns a fresh random Token. It reads crypto/rand, which does not
// fail on supported platforms (it panics inside crypto/rand if it ever does).
func NewToken() Token {
	var raw [16]byte
	rand.Read(raw[:])
	var out [TokenLen]byte
	base64.RawURLEncoding.Encode(out[:], raw[:])
	return Token(out[:])
}

// String returns the token's text.
func (t Token) String() string { return string(t) }
