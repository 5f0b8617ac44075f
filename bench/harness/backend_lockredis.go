package harness

import "github.com/klauthed/lock/lockredis"

func init() {
	register(BackendInfo{
		Name: "lockredis",
		Note: "this project's lockredis, lockredis.New with defaults" +
			" and the target's rueidis.ClientOption " +
			"(client-side caching on, so waiters wake on invalidations; DisableCache only on miniredis)",
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
