package harness

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/klauthed/lock/lockmongo"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func init() {
	register(BackendInfo{
		Name: "lockmongo",
		Note: "this project's lockmongo, lockmongo.New with defaults, on -mongo URI or else an " +
			"embedded FerretDB 1.x (SQLite, offset time path, polling waiters); req counts driver " +
			"commands (event.CommandMonitor), handshakes and heartbeats excluded; optional",
		Optional: true,
		New:      newLockmongo,
	})
}

func newLockmongo(cfg Config) (Backend, error) {
	uri := cfg.MongoURI
	var stop func()
	if uri == "" {
		var err error
		if uri, stop, err = startFerretDB(); err != nil {
			return nil, err
		}
	}
	opts := options.Client().ApplyURI(uri)
	if cfg.Requests != nil {
		reqs := cfg.Requests
		opts.SetMonitor(&event.CommandMonitor{
			Started: func(_ context.Context, e *event.CommandStartedEvent) { reqs.Add(e.CommandName) },
		})
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		if stop != nil {
			stop()
		}
		return nil, err
	}
	closeAll := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := client.Disconnect(ctx)
		if stop != nil {
			stop()
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	coll := client.Database("lockbench").Collection(fmt.Sprintf("locks_%d", time.Now().UnixNano()))
	m, err := lockmongo.New(ctx, coll, lockmongo.Options{})
	if err != nil {
		_ = closeAll()
		return nil, err
	}
	return managerBackend{m: m, close: func() error {
		m.Close()
		return closeAll()
	}}, nil
}

// startFerretDB starts an embedded FerretDB on a free 127.0.0.1 port with its
// SQLite files in a temporary directory; stop ends it and removes them.
func startFerretDB() (uri string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "lockbench-ferretdb-")
	if err != nil {
		return "", nil, err
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Logger:    slog.New(slog.DiscardHandler),
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
	})
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("ferretdb: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = f.Run(ctx)
	}()
	return f.MongoDBURI(), func() {
		cancel()
		<-done
		os.RemoveAll(dir)
	}, nil
}
