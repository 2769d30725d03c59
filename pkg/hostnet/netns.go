package hostnet

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn with the calling goroutine's view of the network
// namespace ns: on a locked OS thread switched into ns, restored in a
// defer that runs whatever fn does. If restoring fails the thread stays
// locked and the runtime discards it with the goroutine, so no other
// goroutine ever runs in the wrong namespace. A closed ns (netns.None())
// runs fn directly.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return // exits locked: the thread is discarded
		}
		defer orig.Close()
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
