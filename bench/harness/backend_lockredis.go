package harness

import "github.com/klauthed/lock/lockredis"

func init() {
	register(BackendInfo{
		Name: "lockredis",
		Note: "this project's lockredis, lockredis.New with defaults" +
			" and the target's rueidis.ClientOption " +
			"(waiters join the key's line in Redis and are handed the key by the release, " +
			"woken by a Pub/Sub push; DisableCache only on miniredis)",
		NeedsRedis: true,
		New: func(cfg Config) (Backend, error) {
			opt, err := cfg.RueidisOption()
			if err != nil {
				return nil, err
			}
			m, err := lockredis.New(lockredis.Options{ClientOption: opt})
			if err != nil {
				return nil, err
			}
			return managerBackend{m: m, close: m.Close}, nil
		},
	})
}
