// Package ferrettest starts an embedded FerretDB (SQLite handler, in a
// temporary directory) on a free 127.0.0.1 port for tests: a real MongoDB
// wire-protocol server, in process, with no setup outside Go.
package ferrettest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Server is a running FerretDB.
type Server struct {
	// URI is the server's connection string, mongodb://127.0.0.1:PORT/.
	URI string
}

// Start starts FerretDB and stops it in tb.Cleanup, waiting for it to close
// its listener, connections and database.
func Start(tb testing.TB) *Server {
	tb.Helper()
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Logger:    slog.New(slog.DiscardHandler),
		Handler:   "sqlite",
		SQLiteURL: "file:" + tb.TempDir() + "/",
	})
	if err != nil {
		tb.Fatalf("ferrettest: new FerretDB: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			tb.Errorf("ferrettest: FerretDB did not stop within 10s")
		}
	})
	return &Server{URI: f.MongoDBURI()}
}

// Client connects a new client to s and disconnects it in tb.Cleanup
// (registered before the caller's later cleanups, so it runs after them).
func (s *Server) Client(tb testing.TB) *mongo.Client {
	tb.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(s.URI))
	if err != nil {
		tb.Fatalf("ferrettest: connect %s: %v", s.URI, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Disconnect(ctx); err != nil {
			tb.Errorf("ferrettest: disconnect: %v", err)
		}
	})
	return c
}
