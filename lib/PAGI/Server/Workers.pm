package PAGI::Server::Workers;
use strict;
use warnings;

our $VERSION = '0.01';

use Future;
use IO::Async::Handle;
use IO::Async::Timer::Periodic;
use POSIX ();
use Scalar::Util qw(weaken);
use Time::HiRes ();

use PAGI::Server::Listen;

=head1 NAME

PAGI::Server::Workers - the prefork master of PAGI::Server

=head1 SYNOPSIS

    # What PAGI::Server's listen does with workers => N (it also attaches
    # TERM/INT/QUIT, HUP, TTIN, TTOU and USR2 to these methods):
    my $master = PAGI::Server::Workers->new(server => $server, loop => $loop);
    $master->start->get;          # binds, forks N workers
    $loop->attach_signal(HUP => sub { $master->restart });
    $loop->run;                   # until $master->shutdown completes

    # pagi-server tells it how to re-execute itself for SIGUSR2:
    PAGI::Server::Workers->exec_command([ $^X, '-Ilib', '/usr/bin/pagi-server', @ARGV ]);

=head1 DESCRIPTION

Internal to L<PAGI::Server> (option C<workers>), documented for operators.
The master binds the listening sockets (with C<reuseport>, one socket per
worker slot, see L<PAGI::Server/reuseport>), then forks the workers. It
never starts an engine and never runs the app: the engine's IO thread must
not exist in a process that forks, and each worker runs its own lifespan.

Each worker, after the fork, creates a fresh L<IO::Async::Loop> (the
master's loop is left untouched: its epoll set is shared with the master),
builds its own L<PAGI::Server> from the same arguments, runs lifespan
startup with C<< pagi => { is_worker => 1, worker_num => N } >>, starts
its engine on the inherited sockets and tells the master it is ready over a
pipe. It ignores C<INT> (the master coordinates) and shuts down gracefully
on C<TERM> or C<QUIT>, on whatever IO::Async loop C<loop_type> chose: the
master blocks C<TERM> and C<QUIT> around the fork, so one sent early waits,
and the worker unblocks them once its loop watches them unless the loop
takes them from a blocked mask itself (Epoll).

=head2 Supervision

=over 4

=item * A worker that dies is replaced, at once the first time and then with
a backoff doubling from 0.1 s up to 5 s while it keeps dying within 10 s.
One that exits 0 (after C<max_requests>) is replaced at once.

=item * A worker that exits with code 2 before it was ready (lifespan
startup failed, or it could not bind) is not replaced. When no worker is
left the master exits with code 2.

=item * C<max_requests>: each worker serves that many requests, plus a
random jitter of up to 10% so workers do not all recycle together, then
drains and exits; the master starts a fresh one (connections wait on the
shared socket meanwhile). Under C<reuseport> no other worker takes what
is queued on the worker's own socket, so it asks the master over its pipe
instead; the master starts the replacement on the same socket and, once
that one is ready, stops the old worker as a HUP does.

=item * Heartbeat: with C<heartbeat_timeout> T (0 = off), each worker writes
a byte to its pipe every T/5 seconds from its loop, and the master checks
every T/2 seconds. A worker silent for T seconds has a blocked loop: it is
killed with SIGKILL and replaced. Slow C<await>s do not block the loop and
are not affected.

=item * A worker notices a dead master (its parent changed) and shuts down.

=back

=head2 Signals (to the master)

=over 4

=item TERM, INT, QUIT

Graceful shutdown: TERM to every worker, each drains within
C<shutdown_timeout> and runs lifespan shutdown; a worker still alive
C<shutdown_timeout> + 1 seconds later is killed. The master exits 0 when
all are gone.

=item HUP

Rolling restart, one worker at a time: a new worker is started, and only
once it is ready (lifespan startup done, engine accepting) is the old one
told to stop. The sockets stay open throughout (under C<reuseport> the
replacement takes over the old worker's slot socket), so no connection is
refused or dropped. Code loaded by the master is not reloaded (use USR2).
A replacement that fails to start aborts the restart; the old workers keep
serving.

=item TTIN, TTOU

One more worker; one fewer (never below one). Under C<reuseport> TTOU
closes the slot of the worker it stops (see L<PAGI::Server/reuseport> for
the connections the kernel may still reset then), and TTIN binds a new one;
after C<--user> dropped privileges that bind can fail (the kernel wants
every socket of a group from the same user), which is logged and leaves
the number of workers unchanged.

=item USR2

Hot restart: fork and C<exec> a new master (the same command line) that
inherits the listening sockets through C<PAGI_REUSE> (with
C<PAGI_MASTER_PID> and C<PAGI_ARGV>). It loads the code afresh, starts its
workers, and once all are ready sends TERM to this master, which drains its
workers and exits. If the new master fails, this one keeps serving: the new
master exits with code 2 when the app does not load, or when any of its
workers ends before all are ready (lifespan startup failed, a crash), so it
never serves beside this one; pagi-server's C<--pid> file is rewritten only
at the take-over (see L</on_take_over>). A Unix socket file stays in place
across the hand-over. C<reuseport> listeners are per worker and are not
handed over.

=back

=head1 METHODS

=head2 new

    PAGI::Server::Workers->new(server => $server, loop => $loop);

=cut

# The command that re-executes this program for a hot restart.
my @EXEC;

=head2 exec_command

    PAGI::Server::Workers->exec_command(\@argv);

Sets the command (interpreter, flags, script, arguments) a SIGUSR2 hot
restart executes. Without it, USR2 is logged and ignored.

=cut

sub exec_command {
    my ($class, $argv) = @_;
    @EXEC = @{ $argv || [] };
}

# Run by a hot-restarted master just before it takes over.
my @TAKE_OVER;

=head2 on_take_over

    PAGI::Server::Workers->on_take_over(sub { write_pid_file() });

Code a hot-restarted master runs once all its workers are ready, before it
sends TERM to the old master (pagi-server writes its pid file here, so the
file names the old master until the new one has taken over). When the code
dies the new master does not take over: it logs the error and exits with
code 2, and the old master keeps serving.

=cut

sub on_take_over {
    my ($class, $code) = @_;
    push @TAKE_OVER, $code;
}

sub new {
    my ($class, %args) = @_;
    my $self = bless {
        %args,
        workers => {},     # pid => worker record
        respawn => {},     # num => timer id of a delayed respawn
        crashes => {},     # num => consecutive quick deaths
    }, $class;
    weaken($self->{server});
    $self->{config} = $self->{server}{config};
    $self->{target} = $self->{config}{workers};
    $self->{done_f} = $self->{loop}->new_future;
    return $self;
}

sub _log { my $self = shift; $self->{server}->_log(@_) if $self->{server} }

sub _now { Time::HiRes::time() }

=head2 start

Binds, forks the workers and returns a done Future (failed with C<Cannot
listen on ...> when binding fails). Workers start in the background.

=cut

sub start {
    my ($self) = @_;
    my $server = $self->{server};
    die "PAGI::Server::Workers: the master must not start an engine before forking\n" if $server->{engine};
    my $ok = eval { $server->bind_listeners; 1 };
    return Future->fail($@ =~ s/ at \S+ line \d+\.?\n\z/\n/r) unless $ok;
    $self->{master_pid} = $$;
    # Set by the master that exec'd us (USR2); ours to act on, not to pass on.
    $self->{old_master} = delete $ENV{PAGI_MASTER_PID};
    delete $ENV{PAGI_ARGV};
    $self->{running} = 1;
    $server->_banner;
    $self->_spawn($_) for 1 .. $self->{target};
    $self->_start_heartbeat_check;
    return Future->done($server);
}

=head2 running, finished, exit_code

True while serving; true once every worker is gone after shutdown (or all
failed to start); 0 after a clean shutdown, 2 when no worker could start or
a hot-restarted master could not take over.

=cut

sub running   { $_[0]{running} ? 1 : 0 }
sub finished  { $_[0]{done_f}->is_ready }
sub exit_code { $_[0]{exit_code} // 0 }

=head2 worker_pids

The pids of the current workers (including ones being stopped), sorted.

=cut

sub worker_pids { [ sort { $a <=> $b } keys %{ $_[0]{workers} } ] }

# ===== spawning =====

sub _spawn {
    my ($self, $num, %opt) = @_;
    my $server = $self->{server};
    if (@{ $server->{reuseport_specs} || [] } && !eval { $server->_reuseport_slot($num); 1 }) {
        $self->_log(error => "cannot bind the sockets of worker $num: $@");
        return;
    }
    my ($r, $w);
    unless (pipe $r, $w) {
        $self->_log(error => "cannot create a pipe for worker $num: $!");
        return;
    }
    # Buffered output would otherwise be written twice, once by each process.
    STDOUT->flush;
    STDERR->flush;
    weaken(my $weak = $self);
    # A TERM sent to the new worker before it watches TERM waits, blocked,
    # instead of killing it (the fork resets the handlers to the default).
    my $mask = POSIX::SigSet->new;
    POSIX::sigprocmask(POSIX::SIG_BLOCK(), POSIX::SigSet->new(POSIX::SIGTERM(), POSIX::SIGQUIT()), $mask);
    my $pid = eval {
        $self->{loop}->fork(
            code    => sub { close $r; $self->_worker_main($num, $w) },
            on_exit => sub { $weak->_on_exit(@_) if $weak },
        );
    };
    my $fork_error = $@;
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), $mask);
    close $w;
    unless ($pid) {
        close $r;
        $self->_log(error => "cannot fork worker $num: " . ($fork_error || $!));
        # A replacement is not retried: the worker it would replace serves on.
        $self->_respawn_later($num, 1) unless $self->{stopping} || $opt{replaces};
        return;
    }
    my $worker = { pid => $pid, num => $num, started => _now(), ready => 0, %opt };
    $worker->{pipe} = IO::Async::Handle->new(
        read_handle   => $r,
        on_read_ready => sub { $weak->_on_pipe($pid) if $weak },
    );
    $self->{loop}->add($worker->{pipe});
    $self->{workers}{$pid} = $worker;
    $self->_log(debug => "started worker $num (pid $pid)");
    return $worker;
}

sub _respawn_later {
    my ($self, $num, $delay) = @_;
    return $self->_spawn($num) unless $delay;
    return if $self->{respawn}{$num};
    weaken(my $weak = $self);
    $self->{respawn}{$num} = $self->{loop}->watch_time(after => $delay, code => sub {
        return unless $weak;
        delete $weak->{respawn}{$num};
        $weak->_spawn($num) unless $weak->{stopping};
    });
}

# Messages from a worker: 'R' once ready, 'H' for each heartbeat, 'M' when
# it has served max_requests under reuseport and wants a replacement.
sub _on_pipe {
    my ($self, $pid) = @_;
    my $worker = $self->{workers}{$pid} or return;
    my $n = sysread($worker->{pipe}->read_handle, my $buf, 4096);
    unless ($n) {
        $self->_unwatch_pipe($worker);
        return;
    }
    $worker->{last_beat} = _now();
    $self->_worker_ready($worker) if !$worker->{ready} && index($buf, 'R') >= 0;
    $self->_recycle($worker) if index($buf, 'M') >= 0;
}

# max_requests under reuseport: no other worker takes the connections queued
# on this worker's slot, so it keeps accepting until its replacement (on the
# same slot) accepts too, then is retired as a HUP retires one.
sub _recycle {
    my ($self, $worker) = @_;
    return if $self->{stopping} || $worker->{retiring} || $worker->{being_replaced};
    $self->_log(info => "worker $worker->{num} (pid $worker->{pid}) served max_requests; starting its replacement");
    $worker->{being_replaced} = 1;
    return if $self->_spawn($worker->{num}, replaces => $worker, recycle => 1);
    # Better past max_requests than one listener fewer.
    delete $worker->{being_replaced};
    $self->_log(error => "worker $worker->{num} keeps serving: its replacement could not be started");
}

sub _unwatch_pipe {
    my ($self, $worker) = @_;
    my $pipe = delete $worker->{pipe} or return;
    $self->{loop}->remove($pipe) if $pipe->loop;
    close $pipe->read_handle;
}

sub _worker_ready {
    my ($self, $worker) = @_;
    $worker->{ready} = 1;
    $worker->{last_beat} = _now();
    $self->_log(debug => "worker $worker->{num} (pid $worker->{pid}) is ready");
    if (my $old = delete $worker->{replaces}) {
        # HUP or recycle: the replacement serves now; the old one may go.
        $self->_retire($old) if $self->{workers}{ $old->{pid} };
        $self->_roll_next unless delete $worker->{recycle};
    }
    return if $self->{all_ready};
    my @serving = grep { !$_->{retiring} } values %{ $self->{workers} };
    return if grep { !$_->{ready} } @serving;
    return if @serving < $self->{target};
    $self->{all_ready} = 1;
    $self->_log(info => scalar(@serving) . ' worker' . (@serving == 1 ? '' : 's') . ' ready');
    $self->_take_over if $self->{old_master};
}

# End of a hot restart, in the new master: the old one may now drain and go.
sub _take_over {
    my ($self) = @_;
    unless (eval { $_->() for @TAKE_OVER; 1 }) {
        (my $error = $@) =~ s/ at \S+ line \d+\.?\n?\z//;
        chomp $error;
        return $self->_abort_hot_restart($error);
    }
    my $old = delete $self->{old_master};
    if ($old =~ /\A\d+\z/ && getppid() == $old) {
        kill 'TERM', $old;
        $self->_log(info => "hot restart: took over from master $old");
    }
    else {
        $self->_log(warn => "PAGI_MASTER_PID $old is not this master's parent: not signalling it");
    }
    # The Unix socket files are ours to remove from now on.
    $_->{owned} = 1 for grep { $_->{reused} && $_->{spec}{type} eq 'unix' } @{ $self->{server}{listeners} || [] };
}

# A hot-restarted master that cannot take over leaves, rather than serve
# beside the old master, which keeps serving (and keeps its pid file).
sub _abort_hot_restart {
    my ($self, $why) = @_;
    my $old = delete $self->{old_master};
    $self->_log(error => "hot restart failed: $why; this new master exits, master $old keeps serving");
    $self->{exit_code} = 2;
    $self->shutdown;
}

sub _on_exit {
    my ($self, $pid, $status) = @_;
    if ($self->{successor} && $pid == $self->{successor}) {
        return $self->_successor_exited($status);
    }
    my $worker = delete $self->{workers}{$pid} or return;
    $self->_unwatch_pipe($worker);
    $self->{loop}->unwatch_time(delete $worker->{kill_timer}) if $worker->{kill_timer};
    $self->_worker_exited($worker, $pid, $status);
    $self->_release_slot($worker->{num});
}

sub _worker_exited {
    my ($self, $worker, $pid, $status) = @_;
    my ($code, $signal) = ($status >> 8, $status & 127);
    my $how = $signal ? "signal $signal" : "exit code $code";
    my $who = "worker $worker->{num} (pid $pid)";
    if ($self->{stopping}) {
        $self->_log(debug => "$who stopped ($how)");
        return $self->_maybe_finish;
    }
    if ($worker->{retiring}) {
        $self->_log(info => "$who stopped");
        return;
    }
    # A hot restart goes ahead only when every new worker starts.
    return $self->_abort_hot_restart("$who ended before the take-over ($how)") if $self->{old_master};
    if (!$worker->{ready} && !$signal && $code == 2) {
        $self->_log(error => "$who failed to start; not restarting it");
        return $self->_abort_roll($worker) if $worker->{replaces};
        unless (%{ $self->{workers} } || %{ $self->{respawn} }) {
            $self->_log(error => 'no worker could start; exiting');
            $self->{exit_code} = 2;
            $self->_finish;
        }
        return;
    }
    if ($worker->{replaces}) {
        $self->_log(error => "replacement $who died before it was ready ($how)");
        return $self->_abort_roll($worker);
    }
    # Its replacement (HUP) is already on the way.
    return if $worker->{being_replaced};
    if (!$signal && $code == 0) {
        $self->_log(info => "$who exited; starting a new one");
        return $self->_spawn($worker->{num});
    }
    my $num = $worker->{num};
    my $lived = _now() - $worker->{started};
    my $crashes = $self->{crashes}{$num} = $lived >= 10 ? 1 : ($self->{crashes}{$num} // 0) + 1;
    my $delay = $crashes <= 1 ? 0 : 0.1 * 2**($crashes - 2);
    $delay = 5 if $delay > 5;
    $self->_log(warn => "$who died ($how)" . ($worker->{hb_killed} ? ' after missing heartbeats' : '')
        . '; starting a new one' . ($delay ? sprintf(' in %.1fs', $delay) : ''));
    $self->_respawn_later($num, $delay);
}

# TERM, then KILL if it has not gone after the grace period.
sub _retire {
    my ($self, $worker) = @_;
    return if $worker->{retiring};
    $worker->{retiring} = 1;
    kill 'TERM', $worker->{pid};
    my $grace = $self->{config}{shutdown_timeout} + 1;
    my $pid = $worker->{pid};
    weaken(my $weak = $self);
    $worker->{kill_timer} = $self->{loop}->watch_time(after => $grace, code => sub {
        return unless $weak && $weak->{workers}{$pid};
        delete $weak->{workers}{$pid}{kill_timer};
        $weak->_log(warn => "worker $weak->{workers}{$pid}{num} (pid $pid) still running ${grace}s after TERM; killing it");
        kill 'KILL', $pid;
    });
}

# ===== heartbeat =====

sub _start_heartbeat_check {
    my ($self) = @_;
    my $timeout = $self->{config}{heartbeat_timeout} or return;
    weaken(my $weak = $self);
    my $timer = $self->{hb_timer} = IO::Async::Timer::Periodic->new(
        interval => $timeout / 2,
        on_tick  => sub { $weak->_check_heartbeats($timeout) if $weak },
    );
    $timer->start;
    $self->{loop}->add($timer);
}

sub _check_heartbeats {
    my ($self, $timeout) = @_;
    my $now = _now();
    for my $worker (values %{ $self->{workers} }) {
        next unless $worker->{ready} && !$worker->{hb_killed};
        my $silent = $now - ($worker->{last_beat} // $now);
        next if $silent < $timeout;
        $self->_log(warn => sprintf 'worker %d (pid %d) sent no heartbeat for %.1fs (blocked loop?); killing it',
            $worker->{num}, $worker->{pid}, $silent);
        $worker->{hb_killed} = 1;
        kill 'KILL', $worker->{pid};
    }
}

# ===== signals =====

=head2 restart

Rolling restart (SIGHUP).

=cut

sub restart {
    my ($self) = @_;
    return if $self->{stopping};
    if ($self->{rolling}) {
        $self->_log(info => 'SIGHUP: a restart is already in progress');
        return;
    }
    my @old = sort { $a->{num} <=> $b->{num} }
        grep { !$_->{retiring} && !$_->{replaces} && !$_->{being_replaced} } values %{ $self->{workers} };
    $self->_log(info => 'SIGHUP: restarting ' . scalar(@old) . ' worker' . (@old == 1 ? '' : 's') . ' one at a time');
    $self->{rolling} = \@old;
    $self->_roll_next;
}

sub _roll_next {
    my ($self) = @_;
    my $queue = $self->{rolling} or return;
    while (my $old = shift @$queue) {
        next unless $self->{workers}{ $old->{pid} } && !$old->{retiring};
        $old->{being_replaced} = 1;
        return if $self->_spawn($old->{num}, replaces => $old);
        delete $old->{being_replaced};
        last;
    }
    delete $self->{rolling};
    $self->_log(info => 'restart complete');
}

sub _abort_roll {
    my ($self, $replacement) = @_;
    my $old = delete $replacement->{replaces};
    delete $old->{being_replaced} if $old;
    if ($replacement->{recycle}) {
        # Better past max_requests than one listener fewer.
        $self->_log(error => "worker $replacement->{num} keeps serving: its replacement failed");
        return;
    }
    delete $self->{rolling};
    $self->_log(error => 'restart aborted: the remaining workers keep serving');
}

=head2 add_worker, remove_worker

One more worker (SIGTTIN); one fewer, never below one (SIGTTOU).

=cut

sub add_worker {
    my ($self) = @_;
    return if $self->{stopping};
    $self->{target}++;
    my $num = $self->_free_num;
    $self->_log(info => "SIGTTIN: adding worker $num ($self->{target} wanted)");
    $self->{target}-- unless $self->_spawn($num);
}

sub remove_worker {
    my ($self) = @_;
    return if $self->{stopping};
    if ($self->{target} <= 1) {
        $self->_log(info => 'SIGTTOU: keeping the last worker');
        return;
    }
    $self->{target}--;
    my ($victim) = sort { $b->{num} <=> $a->{num} }
        grep { !$_->{retiring} && !$_->{being_replaced} && !$_->{replaces} } values %{ $self->{workers} };
    if (!$victim) {
        my ($num) = sort { $b <=> $a } keys %{ $self->{respawn} };
        return unless defined $num;
        $self->{loop}->unwatch_time(delete $self->{respawn}{$num});
        $self->_release_slot($num);
        return;
    }
    $self->_log(info => "SIGTTOU: stopping worker $victim->{num} ($self->{target} wanted)");
    $self->_retire($victim);
    $self->_release_slot($victim->{num});
}

# Under reuseport, the master closes its copy of a worker slot's sockets
# once no worker will serve them any more (a stopping one keeps its own
# copy only while it serves what is queued): the kernel then stops
# queueing connections there. A slot whose worker is replaced (HUP,
# max_requests, a crash) stays open, so its queue waits for the new one.
sub _release_slot {
    my ($self, $num) = @_;
    my $server = $self->{server} or return;
    return unless $server->{reuseport_slots} && $server->{reuseport_slots}{$num};
    return if $self->{respawn}{$num};
    return if grep { $_->{num} == $num && !$_->{retiring} } values %{ $self->{workers} };
    $server->_close_reuseport_slot($num);
}

sub _free_num {
    my ($self) = @_;
    my %used = map { $_->{num} => 1 } grep { !$_->{retiring} } values %{ $self->{workers} };
    $used{$_} = 1 for keys %{ $self->{respawn} };
    my $n = 1;
    $n++ while $used{$n};
    return $n;
}

=head2 hot_restart

Starts a new master that takes over the sockets (SIGUSR2).

=cut

sub hot_restart {
    my ($self) = @_;
    return if $self->{stopping};
    if ($self->{successor}) {
        $self->_log(warn => "SIGUSR2: a hot restart is already in progress (new master pid $self->{successor})");
        return;
    }
    unless (@EXEC) {
        $self->_log(warn => 'SIGUSR2 ignored: hot restart needs pagi-server (no command to re-execute)');
        return;
    }
    my @listeners = @{ $self->{server}{listeners} || [] };
    my @cmd = @EXEC;
    my $master = $self->{master_pid};
    $self->_log(info => 'SIGUSR2: starting a new master');
    STDOUT->flush;
    STDERR->flush;
    weaken(my $weak = $self);
    my $pid = eval {
        $self->{loop}->fork(
            code => sub {
                $ENV{PAGI_REUSE}      = PAGI::Server::Listen->reuse_env(\@listeners);
                $ENV{PAGI_MASTER_PID} = $master;
                $ENV{PAGI_ARGV}       = join "\0", @cmd;
                # A signal mask survives exec: the new master starts with none blocked.
                POSIX::sigprocmask(POSIX::SIG_SETMASK(), POSIX::SigSet->new);
                { exec { $cmd[0] } @cmd }
                warn "[pagi-server] error: hot restart: cannot execute $cmd[0]: $!\n";
                return 127;
            },
            on_exit => sub { $weak->_on_exit(@_) if $weak },
        );
    };
    unless ($pid) {
        $self->_log(error => "hot restart: cannot fork: " . ($@ || $!));
        return;
    }
    $self->{successor} = $pid;
    # The socket files now belong to the new master as well: never remove them.
    for my $l (@listeners) {
        $l->{owned_before_handover} = $l->{owned};
        $l->{owned} = 0;
    }
}

sub _successor_exited {
    my ($self, $status) = @_;
    my $pid = delete $self->{successor};
    return if $self->{stopping};
    my $how = $status & 127 ? 'signal ' . ($status & 127) : 'exit code ' . ($status >> 8);
    $self->_log(error => "hot restart failed: the new master (pid $pid) ended with $how; this master keeps serving");
    for my $l (@{ $self->{server}{listeners} || [] }) {
        $l->{owned} = delete $l->{owned_before_handover} if exists $l->{owned_before_handover};
    }
}

# ===== shutdown =====

=head2 shutdown

Graceful shutdown of every worker. Returns a Future done once all are
gone.

=cut

sub shutdown {
    my ($self) = @_;
    return $self->{done_f} if $self->{stopping};
    $self->{stopping} = 1;
    $self->{running} = 0;
    delete $self->{rolling};
    $self->{loop}->unwatch_time($_) for values %{ $self->{respawn} };
    %{ $self->{respawn} } = ();
    $self->_retire($_) for values %{ $self->{workers} };
    $self->_release_slot($_) for keys %{ $self->{server} ? $self->{server}{reuseport_slots} || {} : {} };
    $self->_maybe_finish;
    return $self->{done_f};
}

sub _maybe_finish {
    my ($self) = @_;
    $self->_finish unless %{ $self->{workers} };
}

sub _finish {
    my ($self) = @_;
    return if $self->{done_f}->is_ready;
    $self->{running} = 0;
    $self->{stopping} = 1;
    if (my $timer = delete $self->{hb_timer}) {
        $timer->stop;
        $self->{loop}->remove($timer);
    }
    my $server = $self->{server};
    return $self->{done_f}->done unless $server;
    $server->_close_listeners;
    # No worker could start: the master's work has ended by itself, as
    # under run, which exits 2.
    $server->{stop_loop} = 1 if $self->exit_code == 2;
    $self->{done_f}->done;
    $server->_served_out;
}

# ===== the worker process =====

# Runs in the forked child; its return value is the exit code.
sub _worker_main {
    my ($self, $num, $pipe) = @_;
    my $master_pid = $self->{master_pid};
    # The master coordinates: Ctrl-C reaches the whole process group.
    $SIG{$_} = 'IGNORE' for qw(INT HUP TTIN TTOU USR2 PIPE);
    # The master's epoll loop keeps the signals it watches blocked, and a
    # fork inherits that mask: programs the app runs would start with TERM
    # blocked. Only TERM and QUIT stay blocked until this worker's loop
    # watches them.
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), POSIX::SigSet->new(POSIX::SIGTERM(), POSIX::SIGQUIT()));
    # The master's ends of the other workers' pipes are of no use here.
    for my $other (values %{ $self->{workers} }) {
        close $other->{pipe}->read_handle if $other->{pipe};
    }
    $pipe->blocking(0);
    $0 = "pagi-server worker $num";

    my $master = $self->{server};
    my $server = eval { ref($master)->new(%{ $master->{args} }, workers => 0) };
    unless ($server) {
        warn "[pagi-server worker $num] error: $@";
        return 2;
    }
    $server->{worker_num} = $num;
    return 2 unless $self->_worker_listeners($server, $master, $num);
    if (my $max = $server->{config}{max_requests}) {
        $server->{requests_left} = $max + int rand($max / 10 + 1);
        # Under reuseport the master starts the replacement first (see _recycle).
        $server->{recycle_via_master} = sub { defined syswrite($pipe, 'M') or $server->shutdown } if $server->{config}{reuseport};
    }
    # A fresh loop: the master's one (and its epoll set) must stay untouched.
    my $loop = $server->_new_loop;
    $loop->add($server);
    my $stop_after_listen;
    for my $signal (qw(TERM QUIT)) {
        $loop->attach_signal($signal => sub {
            $server->_log(info => "received SIG$signal, shutting down");
            if ($server->{engine}) { $server->shutdown }
            else                   { $stop_after_listen = 1 }
        });
    }
    # Under Poll or Select (not Epoll) the handlers only run once the
    # signals are unblocked; one that came since the fork runs now.
    $server->_deliver_signals($loop, qw(TERM QUIT));
    unless (eval { $server->listen->get; 1 }) {
        (my $error = $@) =~ s/ at \S+ line \d+\.?\n\z/\n/;
        $server->_log(error => $error);
        STDERR->flush;
        return 2;
    }
    syswrite $pipe, 'R';
    $self->_worker_heartbeat($server, $loop, $pipe, $master_pid);
    $server->{run_loop} = $loop;
    $server->shutdown if $stop_after_listen;
    $loop->run unless $server->{shutdown_f} && $server->{shutdown_f}->is_ready;
    STDOUT->flush;
    STDERR->flush;
    return $server->{fatal} ? 1 : 0;
}

# The master's sockets (never unlinked by a worker), plus under reuseport
# the sockets of this worker's slot; the other slots' are not this
# worker's to accept on.
sub _worker_listeners {
    my ($self, $server, $master, $num) = @_;
    $server->{listeners} = [ map { +{ %$_, owned => 0 } } @{ $master->{listeners} || [] } ];
    $server->{reuseport_specs} = [];
    close $_->{reserved} for grep { $_->{reserved} } @{ $master->{reuseport_specs} || [] };
    my $slots = $master->{reuseport_slots} || {};
    for my $slot (keys %$slots) {
        if ($slot == $num) { push @{ $server->{listeners} }, map { +{ %$_ } } @{ $slots->{$slot} } }
        else               { close $_->{handle} for @{ $slots->{$slot} } }
    }
    $server->_note_port;
    return 1;
}

sub _worker_heartbeat {
    my ($self, $server, $loop, $pipe, $master_pid) = @_;
    my $timeout = $server->{config}{heartbeat_timeout};
    my $timer = IO::Async::Timer::Periodic->new(
        interval => $timeout ? $timeout / 5 : 1,
        on_tick  => sub {
            my $orphan = getppid() != $master_pid;
            if (!$orphan && $timeout && !defined syswrite($pipe, 'H')) {
                $orphan = 1 if $!{EPIPE};
            }
            return unless $orphan && !$server->{shutdown_f};
            $server->_log(warn => 'the master is gone; shutting down');
            $server->shutdown;
        },
    );
    $timer->start;
    $loop->add($timer);
}

1;
