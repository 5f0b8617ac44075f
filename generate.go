package lock

//go:generate go run ./cmd/scriptgen
