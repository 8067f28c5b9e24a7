package exportdownload

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func (h *Handler) unmarshalFleet(d *caddyfile.Dispenser, lines *settingLines) error {
	if d.NextArg() {
		return d.Errf("fleet: takes a block, not arguments")
	}
	f := new(FleetConfig)
	h.Fleet = f
	seen := map[string]bool{}
	var prev string
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && name != "redis" {
			return d.Errf("fleet: %s: duplicate subdirective", name)
		}
		seen[name] = true
		lines.note(d, where{block: "fleet", sub: name})
		switch name {
		case "redis":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("fleet: redis: want at least one host:port")
			}
			f.Redis = append(f.Redis, args...)
			lines.noteItems(where{block: "fleet", sub: name}, args)
		case "username":
			if err := oneArg(d, &f.Username); err != nil {
				return err
			}
		case "password":
			if err := oneArg(d, &f.Password); err != nil {
				return err
			}
		case "prefix":
			if err := oneArg(d, &f.Prefix); err != nil {
				return err
			}
		case "secret":
			if err := oneArg(d, &f.Secret); err != nil {
				return err
			}
		case "timeout":
			if err := durationArg(d, &f.Timeout); err != nil {
				return err
			}
			if f.Timeout == 0 {
				return d.Errf("fleet: timeout: must be positive")
			}
		case "lock_wait":
			if err := durationArg(d, &f.LockWait); err != nil {
				return err
			}
		case "sentinel":
			if err := oneArg(d, &f.Sentinel); err != nil {
				return err
			}
		case "sentinel_username":
			if err := oneArg(d, &f.SentinelUsername); err != nil {
				return err
			}
		case "sentinel_password":
			if err := oneArg(d, &f.SentinelPassword); err != nil {
				return err
			}
		case "max_staleness":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			if v == "off" {
				f.MaxStaleness = &Staleness{Off: true}
				break
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("fleet: max_staleness: want a positive duration or off, got %q", v)
			}
			f.MaxStaleness = &Staleness{Duration: caddy.Duration(dur)}
		case "tls":
			f.TLS = new(FleetTLS)
			args := d.RemainingArgs()
			if len(args)%2 != 0 {
				return d.Errf("fleet: tls: want [ca_file <pem>] [server_name <name>]")
			}
			for i := 0; i < len(args); i += 2 {
				switch args[i] {
				case "ca_file":
					f.TLS.CAFile = args[i+1]
				case "server_name":
					f.TLS.ServerName = args[i+1]
				default:
					return d.Errf("fleet: tls: unknown option %q (want ca_file or server_name; there is no skip-verify)", args[i])
				}
			}
		case "{":
			return d.Errf("fleet: %s: takes no block", prev)
		default:
			return d.Errf("fleet: unrecognized subdirective %q", name)
		}
		prev = name
	}
	return nil
}
