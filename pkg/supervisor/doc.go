// Package supervisor owns the tailscaled child process: it builds its argv,
// starts it in its own process group, forwards its output to the log, waits
// for its LocalAPI socket, restarts it with exponential backoff when it dies,
// stops it on shutdown (SIGTERM, then SIGKILL to the whole process group after
// Options.ShutdownTimeout) and, when the agent is PID 1, reaps orphaned
// processes without stealing tailscaled's exit status (Reaper).
//
// It publishes the process state with snapshot.Store.SetSupervisor and beats
// the "supervisor" heartbeat; others learn of each (re)start through
// WithOnReady.
//
// It must not talk to tailscaled: no LocalAPI calls (the readiness check only
// dials the socket and hangs up), no tailscale CLI, no network. Signal handling
// is main's job: main turns SIGTERM/SIGINT into a context cancellation (for
// example signal.NotifyContext) and passes that context to Run; the supervisor
// installs no signal handlers of its own except SIGCHLD in the Reaper.
//
// Because tailscaled runs in its own process group, signals aimed at the
// agent (kubelet's SIGTERM to PID 1, Ctrl-C in a terminal) never reach it
// directly: the supervisor alone decides when and how it stops.
//
// When a Reaper runs, any other child process the agent starts and waits for
// must be started through Reaper.Spawn, or the reaper may take its exit
// status.
//
// The guarantee the rest of the agent relies on: tailscaled never outlives the
// agent. Run does not return while its child is alive, whatever the path out,
// and the child carries Pdeathsig=SIGKILL so that even a SIGKILLed agent takes
// it down.
package supervisor
