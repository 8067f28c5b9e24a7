package testenv

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// ListeningSockets counts the TCP sockets in the listening state per local
// port, from /proc/net/tcp and /proc/net/tcp6 (Linux). Where those files do
// not exist it returns an empty map.
func ListeningSockets() map[int]int {
	counts := map[int]int{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			// "sl local_address rem_address st ...": local_address is
			// hex address:port, st 0A is LISTEN.
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "0A" {
				continue
			}
			_, port, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseUint(port, 16, 16); err == nil {
				counts[int(p)]++
			}
		}
		_ = f.Close()
	}
	return counts
}
