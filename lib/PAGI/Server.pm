package PAGI::Server;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'IO::Async::Notifier';

use Carp ();
use Future;
use IO::Async::Handle;
use IO::Handle ();
use IO::Socket::IP;
use POSIX ();
use Scalar::Util qw(blessed weaken);
use Socket qw(SOMAXCONN);
use Time::HiRes ();

use PAGI::Server::Config;
use PAGI::Server::Listen;
use PAGI::Server::HTTP;
use PAGI::Server::WebSocket;
use PAGI::Server::SSE;
use PAGI::Server::Lifespan;
use PAGI::Server::Future;
use PAGI::Server::Groups;
use PAGI::Server::Native qw(:events);

# PAGI-SPEC 8.3: apps that await Future::IO (sleep, sysread, ...) run on
# IO::Async, not on Future::IO's blocking single-handle fallback. The
# implementation ships with IO::Async; it needs Future::IO itself, a
# prerequisite. A program that chose another implementation keeps it.
our $FUTURE_IO = do {
    no warnings 'once';
    eval { require Future::IO; 1 } && !defined $Future::IO::IMPL
        ? (eval { require Future::IO::Impl::IOAsync; 1 } ? 'Future::IO::Impl::IOAsync' : undef)
        : $Future::IO::IMPL;
};

# While events are being dispatched, the batch (so true: commands are
# flushed once at the end) and the server it is of.
our $IN_DRAIN = 0;
our $DRAINING;
# Classes whose objects are Futures (they can is_ready), found once per class.
my %FUTURE_CLASS;

sub new {
    my ($class, %args) = @_;
    my $config = PAGI::Server::Config->new(%args);
    my $self = $class->SUPER::new;
    $self->{state}    = {};
    $self->{requests} = {};
    $self->{running}  = 0;
    $self->_take_config(\%args, $config);
    $self->_check_tls;
    return $self;
}

# Everything derived from the options, so new and configure share it.
sub _take_config {
    my ($self, $args, $config) = @_;
    # Prefork workers build their own server from the same arguments.
    $self->{args}   = {%$args};
    # With the PEM text read now: a worker builds its server after pagi-server
    # may have dropped privileges, and must not need the files again.
    $self->{args}{ssl} = $config->{ssl} if $config->{ssl};
    $self->{config} = $config;
    $self->{app}    = $config->{app};
    delete $self->{proxy};
    if ($config->{proxy_headers}) {
        # Applied to the server's own scope (see _dispatch_request), so the
        # access log shows the forwarded client too.
        require PAGI::Server::ProxyHeaders;
        $self->{proxy} = PAGI::Server::ProxyHeaders->new(
            trusted          => $config->{forwarded_allow_ips},
            forwarded_header => $config->{forwarded_header},
            forwarded_host   => $config->{forwarded_host},
        );
    }
    if (length $config->{root_path}) { $self->{root_path} = $config->{root_path} }
    else                             { delete $self->{root_path} }
    $self->{high_watermark}  = $config->{write_high_watermark};
    # The groups extension: one hub and one hashref for every scope of this server.
    $self->{groups}     //= PAGI::Server::Groups->new(server => $self, backend => length $config->{pubsub} ? 'redis' : 'local');
    $self->{groups_ext} //= { backend => $self->{groups}->backend, node => undef, hub => $self->{groups} };
    $self->{extensions}      = { %{ $config->{extensions} }, groups => $self->{groups_ext} };
    $self->{validate_events} = $config->{validate_events};
    # Lines collected for the old destination go there first.
    $self->_write_access_log if $self->{access_log} && length($self->{log_pending} // '');
    my $log = $config->{access_log};
    # quiet silences the default access log; an explicit one stays.
    $log = undef if $config->{quiet} && !$config->is_explicit('access_log');
    $self->{access_log} = $log;
    delete @$self{qw(log_format log_pending)};
    if ($log) {
        require PAGI::Server::AccessLog;
        $self->{log_format}  = PAGI::Server::AccessLog->compile($config->{access_log_format});
        $self->{log_pending} = '';
    }
}

# A throw-away engine builds the TLS configuration (check_tls, no thread):
# a bad or mismatched certificate or key is reported now, from new, rather
# than at listen after lifespan startup.
sub _check_tls {
    my ($self) = @_;
    my $config = $self->{config};
    if ($config->{ssl} && $config->{disable_tls}) {
        warn "PAGI::Server: disable_tls is set: the ssl option is ignored, serving plain HTTP\n"
            unless $config->{quiet};
        return;
    }
    return unless $config->tls;
    my $ok = eval { PAGI::Server::Native->new($config->engine_options)->check_tls; 1 };
    return if $ok;
    (my $error = $@) =~ s/ at \S+ line \d+\.?\n\z//;
    $error =~ s/\APAGI::Server::Native::\w+: //;
    Carp::croak("PAGI::Server: option 'ssl': $error");
}

# IO::Async::Notifier's own keys; every other key is a server option.
my %NOTIFIER_KEYS = map { $_ => 1 } qw(notifier_name on_error);

# Like IO::Async::Notifier's configure: server options may be changed after
# new (validated as new does; unknown keys croak naming the key). Once the
# server listens, only options read per request can change.
sub configure {
    my ($self, %params) = @_;
    my %notifier = map { ($_ => delete $params{$_}) } grep { $NOTIFIER_KEYS{$_} } keys %params;
    if (%params) {
        # IO::Async::Notifier->new calls configure before new has a config.
        Carp::croak('PAGI::Server::configure: construct the server with new first') unless $self->{config};
        my %args = (%{ $self->{args} }, %params);
        my $config = PAGI::Server::Config->new(%args);
        if ($self->{listen_f} || $self->{listeners}) {
            for my $name (sort keys %params) {
                next if PAGI::Server::Config->is_live($name)
                     || PAGI::Server::Config->same_value($config->{$name}, $self->{config}{$name});
                Carp::croak("PAGI::Server::configure: option '$name' cannot be changed once the server is listening"
                    . ' (options that can: ' . join(', ', PAGI::Server::Config->live_names) . ')');
            }
        }
        $self->_take_config(\%args, $config);
        $self->_check_tls if exists $params{ssl} || exists $params{disable_tls};
    }
    $self->SUPER::configure(%notifier);
}

# What the engine was built with (its build_info names each protocol crate).
sub has_tls   { PAGI::Server::Native->build_info =~ /\brustls\b/ ? 1 : 0 }
sub has_http2 { PAGI::Server::Native->build_info =~ /\bh2\b/     ? 1 : 0 }

my %LOG_RANK = (debug => 0, info => 1, warn => 2, error => 3);

# Log lines go through warn, so $SIG{__WARN__}, Test::Warn and log
# collectors see them; without a handler they land on STDERR as before.
sub _log {
    my ($self, $level, $message) = @_;
    my $min = $self->{config}{quiet} ? 2 : $LOG_RANK{ $self->{config}{log_level} };
    return if ($LOG_RANK{$level} // 1) < $min;
    $message = "$message";
    $message =~ s/\s+\z//;
    my $who = $self->{worker_num} ? "pagi-server worker $self->{worker_num}" : 'pagi-server';
    warn "[$who] $level: $message\n";
}

sub listen {
    my ($self) = @_;
    my $loop = $self->loop or Carp::croak('PAGI::Server::listen: add the server to an IO::Async::Loop first');
    return $self->{listen_f} if $self->{listen_f};
    my $config = $self->{config};

    # The signal handlers of run, installed here (as the reference does) so an
    # embedded server behaves the same; from the start, so a TERM during
    # lifespan startup lets startup finish, then shuts down. A worker
    # installs its own.
    $self->_attach_signals($loop) unless $self->{worker_num};

    if ($config->{workers} && !$self->{worker_num}) {
        require PAGI::Server::Workers;
        $self->{master} = PAGI::Server::Workers->new(server => $self, loop => $loop);
        my $f = $self->{master}->start;
        $self->_detach_signals if $f->is_failed;
        return $self->{listen_f} = $f;
    }

    my $ok = eval { $self->bind_listeners; 1 };
    unless ($ok) {
        $self->_detach_signals;
        return $self->{listen_f} = Future->fail($@ =~ s/ at \S+ line \d+\.?\n\z/\n/r);
    }

    $self->{lifespan} = PAGI::Server::Lifespan->new(
        worker_num       => $self->{worker_num},
        app              => $self->{app},
        loop             => $loop,
        state            => $self->{state},
        mode             => $config->{lifespan_mode},
        startup_timeout  => $config->{lifespan_startup_timeout},
        shutdown_timeout => $config->{shutdown_timeout},
        log              => sub { $self->_log(@_) },
    );
    weaken(my $weak = $self);
    return $self->{listen_f} = $self->{lifespan}->startup->then(sub {
        if (eval { $weak->_start_engine; 1 }) {
            # A stop signal came during lifespan startup.
            $weak->shutdown if delete $weak->{stop_after_listen};
            return Future->done($weak);
        }
        # The engine refused to start (a TLS key that does not match its
        # certificate is only found now): the app started, so it gets its
        # lifespan shutdown before the failure is reported.
        my $error = $@ =~ s/\APAGI::Server::Native::\w+: //r;
        return $weak->{lifespan}->shutdown->then(sub { Future->fail($error) });
    })->else(sub {
        my ($error) = @_;
        if ($weak) {
            $weak->_close_listeners;
            $weak->_detach_signals;
        }
        Future->fail($error =~ /\n\z/ ? $error : "$error\n");
    });
}

# Public (POD below): pagi-server binds before daemonizing and dropping
# privileges, so a busy port is reported on the terminal.
sub bind_listeners {
    my ($self) = @_;
    return $self if $self->{listeners};
    my $config = $self->{config};
    my @wanted = PAGI::Server::Listen->requested($config);
    # A prefork master under reuseport gives each worker its own
    # SO_REUSEPORT socket (the kernel spreads connections over them): one
    # per worker slot, bound here and kept by the master, so a worker's
    # replacement takes over its socket and the queue on it (see WORKERS).
    my $defer = $config->{reuseport} && $config->{workers} && !$self->{worker_num};
    my ($listeners, $deferred) = PAGI::Server::Listen->open_all(\@wanted,
        backlog   => $config->{listener_backlog},
        reuseport => $config->{reuseport},
        defer_tcp => $defer,
    );
    $self->{listeners} = $listeners;
    $self->{reuseport_specs} = $deferred;
    unless (@$listeners || @$deferred) {
        $self->_close_listeners;
        die "No listening socket: nothing to listen on\n";
    }
    if (@$deferred) {
        my $ok = eval { $self->_reuseport_slot($_) for 1 .. $config->{workers}; 1 };
        unless ($ok) {
            my $error = $@;
            $self->_close_listeners;
            die $error;
        }
    }
    $self->_note_port;
    return $self;
}

# The SO_REUSEPORT sockets of worker slot $num, bound on first use.
sub _reuseport_slot {
    my ($self, $num) = @_;
    return $self->{reuseport_slots}{$num} //=
        PAGI::Server::Listen->bind_group_member($self->{reuseport_specs}, $self->{config}{listener_backlog});
}

sub _close_reuseport_slot {
    my ($self, $num) = @_;
    PAGI::Server::Listen->close_all(delete $self->{reuseport_slots}{$num});
}

sub _note_port {
    my ($self) = @_;
    my ($tcp) = grep { $_->{type} eq 'tcp' } (map { $_->{spec} } @{ $self->{listeners} }), @{ $self->{reuseport_specs} || [] };
    $self->{port} = $tcp->{port} if $tcp;
}

sub _start_engine {
    my ($self) = @_;
    # The node id is per process (a worker is a node of its own).
    my $engine = $self->{engine} = PAGI::Server::Native->new($self->{config}->engine_options, node => $self->{groups}->node);
    my $tls = $self->{config}->tls;
    for my $l (@{ $self->{listeners} }) {
        # All TCP listeners are TLS when ssl is set; Unix sockets stay plain.
        $engine->listen_fd($l->{handle}, ($tls && $l->{spec}{type} eq 'tcp') ? (tls => 1) : ());
    }
    $engine->start;
    open my $wake, '<&', $engine->fd or die "Cannot dup the engine notifier: $!\n";
    weaken(my $weak = $self);
    $self->{wake} = IO::Async::Handle->new(
        read_handle   => $wake,
        on_read_ready => sub { $weak->_on_wake if $weak },
    );
    $self->add_child($self->{wake});
    $self->{running} = 1;
    $self->{groups_ext}{node} = $self->{groups}->node;
    $self->{groups}->_engine_started;
    if ($self->{worker_num}) {
        $self->_log(info => "worker $self->{worker_num} ready (pid $$)");
    }
    else {
        $self->_banner;
    }
}

# Startup banner: what runs, and every address it answers on.
sub _banner {
    my ($self) = @_;
    my $config = $self->{config};
    my $tls = $config->tls ? 1 : 0;
    my $mode = $config->{workers} ? "$config->{workers} worker" . ($config->{workers} == 1 ? '' : 's') : 'single process';
    $self->_log(info => sprintf 'PAGI-Server-Native %s (engine %s, perl %s), pid %d, %s, TLS %s',
        $VERSION, $PAGI::Server::Native::VERSION, sprintf('%vd', $^V), $$, $mode, $tls ? 'on' : 'off');
    for my $spec (@{ $self->listeners }) {
        $self->_log(info => 'listening on ' . PAGI::Server::Listen->describe($spec, $tls && $spec->{type} eq 'tcp'));
    }
    if (length $config->{pubsub}) {
        (my $where = $config->{pubsub}) =~ s{\A(rediss?://)[^@/?#]*@}{$1***@};
        $self->_log(info => "groups (rooms and channels) cross processes through $where");
    }
    elsif (($config->{workers} // 0) > 1) {
        $self->_log(warn => "groups (rooms and channels) are per worker: a publish reaches only the members connected to its own worker (--pubsub redis://... shares them)");
    }
}

# The hot path: one drain per wake, events dispatched, commands flushed once.
# Each event runs the app's callbacks (Futures it resolves), so each is
# dispatched under its own eval: a callback that dies is logged and the rest
# of the batch is served; it never unwinds the loop and ends the process.
sub _on_wake {
    my ($self) = @_;
    my $engine = $self->{engine} or return;
    if ($IN_DRAIN) {
        # A wake from inside a dispatch: an app blocked in ->get on one of
        # its Futures (PAGI::Server::Future::await). The rest of the batch
        # being dispatched goes first, so each request's events keep their
        # order; a server whose batch is not the innermost one waits for it
        # to unwind.
        return if !$DRAINING || $DRAINING != $self;
        _dispatch_batch($self, $IN_DRAIN);
    }
    my $events = $engine->drain_events(256);
    local ($IN_DRAIN, $DRAINING) = ($events, $self);
    # _dispatch_batch's loop, inline: this is every wake.
    for my $ev (@$events) {
        my $kind = $ev->[0] or next;
        $ev->[0] = 0;
        next if eval { $self->_dispatch_event($ev, $kind); 1 };
        $self->_event_died($ev, $@, $kind);
    }
    $engine->flush if $self->{engine};
    $self->_write_access_log if $self->{access_log} && length $self->{log_pending};
}

# Each event is marked taken (kind 0) as its dispatch begins: that is how
# a nested wake knows where the batch stands.
sub _dispatch_batch {
    my ($self, $events) = @_;
    for my $ev (@$events) {
        my $kind = $ev->[0] or next;
        $ev->[0] = 0;
        next if eval { $self->_dispatch_event($ev, $kind); 1 };
        $self->_event_died($ev, $@, $kind);
    }
}

# The kinds most events are of come first.
sub _dispatch_event {
    my ($self, $ev, $kind) = @_;
    my $requests = $self->{requests};
    if ($kind == EV_REQUEST) {
        $self->_dispatch_request($ev);
    }
    elsif ($kind == EV_DONE) {
        my $req = delete $requests->{ $ev->[1] } or return;
        # The engine's completion time: the event itself may come a
        # millisecond later, riding along with the next wake.
        $req->{done_at} = $ev->[2];
        # The usual HTTP request, which nothing logs, ends without the
        # general path's eval and method calls when nothing waits on it.
        return if !$self->{access_log} && ref $req eq 'PAGI::Server::HTTP' && PAGI::Server::HTTP::_done_quietly($req);
        $self->_end_request($req, _ev_done => ());
    }
    elsif ($kind == EV_WS_MESSAGE) {
        my $req = $requests->{ $ev->[1] } or return;
        $req->_ev_message($ev->[2], $ev->[3]);
    }
    elsif ($kind == EV_BODY) {
        my $req = $requests->{ $ev->[1] } or return;
        $req->_ev_body($ev->[2], $ev->[3]);
    }
    elsif ($kind == EV_WRITABLE) {
        my $req = $requests->{ $ev->[1] } or return;
        $req->_ev_writable;
    }
    elsif ($kind == EV_DISCONNECT) {
        my $req = delete $requests->{ $ev->[1] } or return;
        $self->_end_request($req, _ev_disconnect => $ev->[2]);
    }
    elsif ($kind == EV_WS_DISCONNECT) {
        my $req = delete $requests->{ $ev->[1] } or return;
        $self->_end_request($req, _ev_ws_disconnect => $ev->[2], $ev->[3]);
    }
    elsif ($kind == EV_SHUTDOWN) {
        my $req = $requests->{ $ev->[1] } or return;
        $req->_ev_shutdown;
    }
    elsif ($kind == EV_LOG) {
        $self->_log($ev->[2] => $ev->[3]);
    }
    elsif ($kind == EV_REPLY) {
        $self->{groups}->_ev_reply($ev->[1], $ev->[2], $ev->[3]);
    }
    elsif ($kind == EV_GROUP_MESSAGE) {
        $self->{groups}->_ev_message($ev->[2]);
    }
    elsif ($kind == EV_STOPPED) {
        $self->_engine_stopped;
    }
    elsif ($kind == EV_FATAL) {
        $self->_log(error => "engine failure: $ev->[2]");
        $self->{fatal} = $ev->[2];
        $self->_engine_stopped;
        $self->shutdown;
    }
}

# A terminal event: the request is logged and released even when a callback
# run by the event dies.
sub _end_request {
    my ($self, $req, $method, @args) = @_;
    my $ok = eval { $req->$method(@args); 1 };
    my $error = $@;
    # Logged when logging was on as the request arrived (t0 set then).
    $self->_access_log($req) if $self->{access_log} && defined $req->{t0};
    $self->_callback_error($req, $error) unless $ok;
    $req->_ended;
}

# An event's dispatch died outside _end_request: the request it was for,
# if still open, ends as after an app exception (500 before a response
# started, else the connection is cut), so it cannot hang.
sub _event_died {
    my ($self, $ev, $error, $kind) = @_;
    # Engine-wide events carry no request id (a reply's second field is its token).
    my $req = $kind == EV_LOG || $kind == EV_STOPPED || $kind == EV_FATAL || $kind == EV_REPLY || $kind == EV_GROUP_MESSAGE
        ? undef : $self->{requests}{ $ev->[1] };
    $self->_callback_error($req, $error);
    return unless $req;
    eval { $req->_callback_died; 1 }
        or $self->_log(error => "cannot end the request after a callback error: $@");
}

sub _callback_error {
    my ($self, $req, $error) = @_;
    $error = "$error";
    $error =~ s/\s+\z//;
    my $scope = $req && $req->{scope};
    my $what = !$scope ? '' : $scope->{type} eq 'http'
        ? " ($scope->{method} $scope->{path})" : " ($scope->{type} $scope->{path})";
    $self->_log(error => "PAGI application error in a callback$what: $error");
}

sub _dispatch_request {
    my ($self, $ev) = @_;
    my (undef, $id, $scope, $body) = @$ev;
    # max_requests in a prefork worker: this request is served, then the
    # worker drains and exits so the master starts a fresh one.
    my $last = defined $self->{requests_left} && --$self->{requests_left} == 0;
    $scope->{root_path}  = $self->{root_path} if defined $self->{root_path};
    $self->{proxy}->apply($scope) if $self->{proxy};
    $scope->{state}      = { %{ $self->{state} } };
    # The engine puts the tls extension in place on TLS connections.
    my $engine_ext = $scope->{extensions};
    $scope->{extensions} = $engine_ext ? { %{ $self->{extensions} }, %$engine_ext } : { %{ $self->{extensions} } };
    # Each scope type's $send is an XSUB bound to its object (_bound_send):
    # the class's XS fast path, which hands every event it does not take
    # (and every mistake) to the class's send method.
    my ($req, $send);
    if ($scope->{type} eq 'http') {
        $req = PAGI::Server::HTTP->new($self, $id, $scope, $body);
        # One object is both: its methods are the two interfaces of PAGI-SPEC 3.1.5/3.1.6.
        $scope->{'pagi.connection'} = $scope->{'pagi.transport'} = $req;
        $send = PAGI::Server::HTTP::_bound_send($req);
    }
    elsif ($scope->{type} eq 'sse') {
        $req = PAGI::Server::SSE->new($self, $id, $scope, $body);
        $send = PAGI::Server::SSE::_bound_send($req);
    }
    else {
        delete $scope->{extensions}{fullflush};    # an http/sse extension
        $req = PAGI::Server::WebSocket->new($self, $id, $scope);
        $send = PAGI::Server::WebSocket::_bound_send($req);
    }
    $req->{t0} = Time::HiRes::time() if $self->{access_log};
    $self->{requests}{$id} = $req;
    my $f = eval { $self->{app}->($scope, sub { $req->receive }, $send) };
    if (!defined $f && $@) {
        $f = Future->fail($@);
    }
    my $class = blessed $f;
    if (!$class || !($FUTURE_CLASS{$class} //= $f->can('is_ready') ? 1 : 0)) {
        $req->app_finished(Future->done);
    }
    elsif ($f->is_ready) {
        # The usual HTTP ending, a done Future and a complete response, is
        # only marked; anything else gets app_finished's whole contract.
        $req->app_finished($f) unless ref $req eq 'PAGI::Server::HTTP' && PAGI::Server::HTTP::_finished_quietly($req, $f);
    }
    else {
        $req->{app_f} = $f;
        $f->on_ready(sub { delete $req->{app_f}; $req->app_finished($_[0]) });
    }
    $self->_recycle if $last;
}

# Stops accepting at once (the request that reached the limit and any in
# flight still finish): connections wait on the shared socket for the
# other workers. Nobody else takes what is queued on a reuseport worker's
# own socket, so there the master first starts a replacement, then stops
# this one.
sub _recycle {
    my ($self) = @_;
    $self->_log(info => "served max_requests ($self->{config}{max_requests}); recycling worker (pid $$)");
    return $self->{recycle_via_master}->() if $self->{recycle_via_master};
    $self->shutdown;
}

# Commands queued outside a drain (timers, other I/O) are flushed on the next tick.
sub _flush_soon {
    my ($self) = @_;
    return if $IN_DRAIN || $self->{flush_pending};
    my $loop = $self->loop or return;
    $self->{flush_pending} = 1;
    weaken(my $weak = $self);
    $loop->later(sub {
        return unless $weak;
        $weak->{flush_pending} = 0;
        $weak->{engine}->flush if $weak->{engine};
    });
}

# Access-log lines are collected during a drain and written once per wake,
# so logging costs no syscall per request.
sub _access_log {
    my ($self, $req) = @_;
    my $scope = $req->{scope} or return;
    my $now = $req->{done_at} // Time::HiRes::time();
    $self->{log_pending} .= $self->{log_format}->({
        client   => $scope->{client} ? $scope->{client}[0] : undef,
        time     => $now,
        method   => $scope->{method} // 'GET',
        path     => $scope->{raw_path},
        query    => $scope->{query_string},
        protocol => "HTTP/$scope->{http_version}",
        status   => $req->{status},
        bytes    => $req->{bytes_sent} // 0,
        duration => $now - ($req->{t0} // $now),
        headers  => $scope->{headers},
    });
}

sub _write_access_log {
    my ($self) = @_;
    my $fh = $self->{access_log};
    print {$fh} $self->{log_pending};
    # One flush per batch: lines reach the file promptly without a write per request.
    $fh->flush if Scalar::Util::blessed($fh) || ref $fh eq 'GLOB';
    $self->{log_pending} = '';
}

sub shutdown {
    my ($self) = @_;
    return $self->{shutdown_f} if $self->{shutdown_f};
    return $self->{shutdown_f} = $self->{master}->shutdown if $self->{master};
    my $loop = $self->loop or return Future->done;
    $self->{running} = 0;
    my $engine_stopped = $self->{engine_stopped_f} //= $loop->new_future;
    if ($self->{engine} && !$self->{engine_gone}) {
        eval { $self->{engine}->shutdown($self->{config}{shutdown_timeout}); 1 }
            or $engine_stopped->done;
    }
    else {
        $engine_stopped->done unless $engine_stopped->is_ready;
    }
    $self->_close_reuseport_listeners;
    weaken(my $weak = $self);
    return $self->{shutdown_f} = $engine_stopped->then(sub {
        $weak->_write_access_log if $weak && $weak->{access_log} && length $weak->{log_pending};
        return Future->done unless $weak;
        $weak->_close_listeners;
        $weak->{lifespan} ? $weak->{lifespan}->shutdown : Future->done;
    })->then(sub {
        return Future->done unless $weak;
        $weak->remove_child(delete $weak->{wake}) if $weak->{wake};
        $weak->_served_out;
        Future->done;
    });
}

# The end of serving, single process or master: the signal handlers go, and
# the loop stops when run() waits on it (whatever ended the server ends that
# wait) or when a signal, not the caller, ended it (an embedding script's
# $loop->run returns, as with the reference server).
sub _served_out {
    my ($self) = @_;
    my $loop = $self->{run_loop} // ($self->{stop_loop} ? $self->loop : undef);
    $loop->stop if $loop;
    # Not from here: this may run inside the loop's own walk over the
    # signals it watches (a worker's exit comes with SIGCHLD).
    weaken(my $weak = $self);
    $self->{signal_loop}->later(sub { $weak->_detach_signals if $weak }) if $self->{signal_loop};
}

# A draining process closes its own SO_REUSEPORT sockets at once: the
# kernel stops queueing connections on them (other processes of the group
# take them), and the engine's duplicate, which still serves what is
# already queued, is then the last reference, dropped as soon as it has.
sub _close_reuseport_listeners {
    my ($self) = @_;
    my $listeners = $self->{listeners} or return;
    my @own = grep { $_->{reuseport} } @$listeners or return;
    @$listeners = grep { !$_->{reuseport} } @$listeners;
    PAGI::Server::Listen->close_all(\@own);
}

sub _engine_stopped {
    my ($self) = @_;
    $self->{engine_gone} = 1;
    $self->{running} = 0;
    for my $req (values %{ $self->{requests} }) {
        $req->_ev_disconnect('server_shutdown');
    }
    %{ $self->{requests} } = ();
    $self->{groups}->_engine_stopped;
    my $f = $self->{engine_stopped_f} //= $self->loop->new_future;
    $f->done unless $f->is_ready;
}

sub _close_listeners {
    my ($self) = @_;
    PAGI::Server::Listen->close_all(delete $self->{listeners});
    $self->_close_reuseport_slot($_) for keys %{ $self->{reuseport_slots} || {} };
    close $_->{reserved} for grep { $_->{reserved} } @{ delete $self->{reuseport_specs} || [] };
}

sub run {
    my ($self) = @_;
    my $loop = $self->loop;
    unless ($loop) {
        $loop = $self->{config}{workers} ? _master_loop() : $self->_new_loop;
        $loop->add($self);
    }
    # listen installs the signal handlers (see SIGNALS).
    $self->listen->get;
    $self->{run_loop} = $loop;
    $loop->run unless $self->_served;
    delete $self->{run_loop};
    $self->_detach_signals;
    return $self->{master} ? $self->{master}->exit_code : $self->{fatal} ? 1 : 0;
}

sub _served {
    my ($self) = @_;
    return $self->{master}->finished if $self->{master};
    return $self->{shutdown_f} && $self->{shutdown_f}->is_ready;
}

# TERM/INT/QUIT stop gracefully; with workers HUP, TTIN, TTOU and USR2 go
# to the master, in a single process they are logged and ignored (their
# default action would end or stop the process).
sub _signal_handlers {
    my ($self) = @_;
    weaken(my $weak = $self);
    my %stop = map { my $sig = $_; ($sig => sub { $weak->_stop_by_signal($sig) if $weak }) } qw(TERM INT QUIT);
    if ($self->{config}{workers}) {
        my $to_master = sub {
            my ($method) = @_;
            sub { $weak->{master}->$method if $weak && $weak->{master} };
        };
        return (%stop,
            HUP  => $to_master->('restart'),
            TTIN => $to_master->('add_worker'),
            TTOU => $to_master->('remove_worker'),
            USR2 => $to_master->('hot_restart'),
        );
    }
    my $note = sub {
        my ($level, $text) = @_;
        sub { $weak->_log($level => $text) if $weak };
    };
    return (%stop,
        HUP  => $note->(info => 'SIGHUP ignored in single-process mode (restart needs workers)'),
        USR2 => $note->(warn => 'SIGUSR2 ignored: hot restart needs workers'),
        TTIN => $note->(info => 'SIGTTIN ignored in single-process mode'),
        TTOU => $note->(info => 'SIGTTOU ignored in single-process mode'),
    );
}

sub _stop_by_signal {
    my ($self, $name) = @_;
    $self->_log(info => "received SIG$name, shutting down");
    $self->{stop_loop} = 1;
    if ($self->{master} || $self->{engine}) { $self->shutdown }
    else                                    { $self->{stop_after_listen} = 1 }
}

sub _attach_signals {
    my ($self, $loop) = @_;
    return if $self->{signal_ids};
    my %handlers = $self->_signal_handlers;
    $self->{signal_loop} = $loop;
    $self->{signal_ids} = { map { ($_ => $loop->attach_signal($_ => $handlers{$_})) } keys %handlers };
    $self->_deliver_signals($loop, keys %handlers);
}

# IO::Async::Loop::Epoll (and ::Ppoll) keep the signals they watch blocked
# and take them inside epoll_pwait/ppoll; every other loop (Poll, Select,
# EV, ...) takes them from a handler, which a blocked signal never reaches:
# a mask inherited through fork or exec must not keep them out.
sub _deliver_signals {
    my ($class, $loop, @names) = @_;
    return if grep { $loop->isa("IO::Async::Loop::$_") } qw(Epoll Ppoll);
    my $set = POSIX::SigSet->new(map { POSIX->can("SIG$_")->() } @names);
    POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $set);
}

sub _detach_signals {
    my ($self) = @_;
    my $ids = delete $self->{signal_ids} or return;
    my $loop = delete $self->{signal_loop};
    $loop->detach_signal($_, $ids->{$_}) for keys %$ids;
}

# The class of the pending Futures its requests hand to the app: this
# loop's PAGI::Server::Future (plain Futures while on no loop).
sub _future_class {
    my ($self) = @_;
    my $loop = $self->loop or return 'Future';
    return $self->{future_class} //= PAGI::Server::Future->class_for($loop, $self);
}

# Removed from its loop without a shutdown: the handlers go with it.
sub _remove_from_loop {
    my ($self, $loop) = @_;
    PAGI::Server::Future->forget_server($self) if delete $self->{future_class};
    $self->_detach_signals;
    $self->SUPER::_remove_from_loop($loop);
}

# The prefork master's loop. The master only forks, reaps, relays signals and
# reads its workers' pipes, and does so on IO::Async::Loop::Poll whatever
# loop_type says (the workers run on loop_type): IO::Async::Loop::Epoll runs
# its signal handlers as unsafe handlers inside epoll_pwait, and under the
# steady SIGCHLD of recycled workers (max_requests) that crashed the master
# with SIGSEGV in perl's signal dispatch, about one run in three of
# t/server-reuseport.t here; with Poll the signals go through perl's safe
# handlers. It is not made IO::Async::Loop->new's answer.
sub _master_loop {
    require IO::Async::Loop::Poll;
    # Poll takes SIGCHLD from a handler, which a blocked signal never
    # reaches; a parent's Epoll loop leaves the signals it watches blocked
    # in a child it forked, and the master must reap its workers.
    POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), POSIX::SigSet->new(POSIX::SIGCHLD()));
    return IO::Async::Loop::Poll->new;
}

# The signals a running server watches (see SIGNALS); pagi-server keeps
# them blocked from the bind until the loop watches them.
sub handled_signals { qw(TERM INT QUIT HUP USR2 TTIN TTOU) }

# A loop of the configured class; apps calling IO::Async::Loop->new get it.
sub _new_loop {
    my ($self) = @_;
    my $type = $self->{config}{loop_type};
    return _loop_of_type($type, sub { $self->_log(@_) });
}

# Class-level (pagi-server makes the loop before it loads the app): the
# process-wide loop when it already is of the class $type names, else a new
# one of that class, which becomes IO::Async::Loop->new's answer when that
# has none yet. When code already made a loop of another class, the server
# still runs on $type, and $log is told: that code's timers would not fire.
sub _loop_of_type {
    my ($type, $log) = @_;
    require IO::Async::Loop;
    return IO::Async::Loop->new unless defined $type;
    my $class = $type =~ /::/ ? $type : "IO::Async::Loop::$type";
    (my $file = "$class.pm") =~ s{::}{/}g;
    require $file;
    no warnings 'once';
    my $existing = $IO::Async::Loop::ONE_TRUE_LOOP;
    return $existing if $existing && $existing->isa($class);
    my $loop = $class->new;
    $log->(warn => "loop_type $type: IO::Async::Loop->new was called before the server made its loop, "
        . "so code using it gets an " . ref($existing) . ", not the server's $class") if $existing && $log;
    $IO::Async::Loop::ONE_TRUE_LOOP ||= $loop;
    return $loop;
}

sub port {
    my ($self) = @_;
    return $self->{port} if defined $self->{port};
    my ($tcp) = grep { $_->{type} eq 'tcp' } PAGI::Server::Listen->requested($self->{config});
    return $tcp ? $tcp->{port} : undef;
}

sub is_running {
    my ($self) = @_;
    return $self->{master} ? ($self->{master}->running ? 1 : 0) : ($self->{running} ? 1 : 0);
}

sub connection_count {
    my ($self) = @_;
    return 0 unless $self->{engine} && !$self->{engine_gone};
    return $self->{engine}->stats->{connections_active};
}

sub effective_max_connections { $_[0]{config}{max_connections} || 1000 }

sub listeners {
    my ($self) = @_;
    if ($self->{listeners}) {
        return [
            (map { +{ %{ $_->{spec} } } } @{ $self->{listeners} }),
            (map { +{ type => 'tcp', host => $_->{host}, port => $_->{port} } } @{ $self->{reuseport_specs} || [] }),
        ];
    }
    return [ map {
        my %s = %$_;
        delete @s{qw(explicit mode)};
        $s{type} eq 'unix' ? { type => 'unix', path => $s{path} } : \%s;
    } PAGI::Server::Listen->requested($self->{config}) ];
}

sub socket_path {
    my ($self) = @_;
    my ($unix) = grep { $_->{type} eq 'unix' } @{ $self->listeners };
    return $unix ? $unix->{path} : undef;
}

sub engine { $_[0]{engine} }

sub groups { $_[0]{groups} }

1;

__END__

=head1 NAME

PAGI::Server - a PAGI web server with a Rust HTTP core

=head1 SYNOPSIS

    use IO::Async::Loop;
    use Future::AsyncAwait;
    use PAGI::Server;

    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => "Hello\n" });
    };

    my $loop   = IO::Async::Loop->new;
    my $server = PAGI::Server->new(app => $app, host => '127.0.0.1', port => 0, quiet => 1);
    $loop->add($server);
    $server->listen->get;
    print "listening on port ", $server->port, "\n";
    $loop->run;

    # or, standalone (handles SIGTERM and SIGINT):
    PAGI::Server->new(app => $app, port => 5000)->run;

=head1 DESCRIPTION

PAGI::Server runs PAGI applications (C<async sub ($scope, $receive,
$send)>, see PAGI-SPEC) on L<IO::Async>. Sockets, HTTP/1.1 parsing,
framing, keep-alive and timeouts are done by the Rust engine
L<PAGI::Server::Native> on its own thread; the app, lifespan and the
C<$scope>/C<$receive>/C<$send> protocol run here, on the loop.

It is an L<IO::Async::Notifier> with the public API of the reference
PAGI::Server, so apps and tests written for it work unchanged.

=head1 OPTIONS

Given to C<new> (or later to L</configure>). Unknown options croak naming
the option; options of features not built yet (C<ws_idle_timeout>,
C<sse_idle_timeout>, C<http2> and the C<h2_*> options) croak C<not
supported yet> unless given their default. Defaults in brackets; an
option passed as C<undef> takes its default (so C<host =E<gt> undef> is
127.0.0.1), except C<access_log =E<gt> undef>, which turns the access log
off.

=over 4

=item app (required)

The PAGI application, a code reference returning a Future.

=item host [127.0.0.1], port [5000]

Where to listen; C<port =E<gt> 0> picks a free port, read back with
L</port>. IPv6 hosts such as C<::1> work too.

=item socket, socket_mode

    socket => '/run/app.sock', socket_mode => 0660

Listen on a Unix-domain socket instead of TCP (exclusive with C<host>,
C<port>, C<listen> and C<fd>). A stale socket file (one nobody accepts on)
is removed before binding; a live socket or any other file is an error.
C<socket_mode> is applied at bind time (the umask is narrowed, then the
file chmod'ed). The file is removed at shutdown, unless the socket was
inherited. Scopes from a Unix socket have no C<client> and C<server> is
C<[path, undef]>.

=item listen

    listen => [ { host => '0.0.0.0', port => 8080 },
                { socket => '/run/app.sock', socket_mode => 0660 },
                { fd => 3 } ]

Several listeners (exclusive with C<host>, C<port>, C<socket>,
C<socket_mode> and C<fd>). All are served by the same engine.

=item fd

    fd => 3

Serve on an inherited, already listening socket (TCP or Unix). Sockets
passed by systemd socket activation (C<LISTEN_FDS>, C<LISTEN_PID> naming
this process) are adopted without any option: they replace the default
127.0.0.1:5000, and the variables are removed from the environment. A
hot-restarting master passes its sockets in C<PAGI_REUSE>
(C<host:port:fd> or C<unix:/path:fd>, comma-separated) and they are
adopted the same way.

=item reuseport [0]

Sets C<SO_REUSEPORT>. With workers, each worker accepts on its own socket
on the same port and the kernel spreads connections among them (TCP only;
such sockets are not handed over by a hot restart). See L</WORKERS> for how
restarts keep every connection.

=item listener_backlog [2048]

The listen() queue.

=item ssl, disable_tls [0]

    ssl => { cert_file => 'cert.pem', key_file => 'key.pem',
             ca_file => 'clients-ca.pem', verify_client => 'require',
             min_version => 'TLSv1_3', cipher_list => 'TLS13_AES_128_GCM_SHA256' }

Serve HTTPS (and C<wss>) on every TCP listener, with rustls in the
engine; Unix sockets stay plain. C<cert_file> and C<key_file> (PEM) are
required; C<cert_pem>, C<key_pem> and C<ca_pem> give the PEM text itself
instead of (or ahead of) the matching file. C<new> reads the files once,
and the engine and every worker use that text, never the files: so the
key may be readable by root only when pagi-server drops privileges with
C<--user> (a hot restart, exec'd as that user, reads them again). C<verify_client> is C<none> (the default), C<optional> or
C<require> and needs C<ca_file>, the CAs that sign client certificates.
C<min_version> is C<TLSv1_2> (default) or C<TLSv1_3>. C<cipher_list> is
a colon-separated list of rustls suite names. C<new> croaks naming the
path when a file is missing, unreadable or not PEM; a key that does not
match its certificate is found when the engine starts, and L</listen>
fails saying so. TLS connections have scheme C<https>/C<wss> and the
C<tls> extension (PAGI-SPEC 4). C<disable_tls> ignores C<ssl>, with a
warning.

=item workers [0], max_requests [0], heartbeat_timeout [50]

C<workers =E<gt> N> runs a prefork master and N worker processes; see
L</WORKERS>. C<max_requests> recycles a worker after that many requests
(plus up to 10% jitter), 0 never. C<heartbeat_timeout> kills and replaces
a worker whose event loop has been blocked that many seconds (0 = off).

=item proxy_headers [0], forwarded_allow_ips [127.0.0.1,::1], forwarded_header [0], forwarded_host [0]

Behind a reverse proxy: with C<proxy_headers>, take the client address
and scheme from C<X-Forwarded-For> and C<X-Forwarded-Proto>, but only when
the connection comes from a trusted peer; from any other peer the headers
are ignored. The access log shows the forwarded client too.

C<forwarded_allow_ips> lists the trusted peers (a comma-separated string
or an array reference): IPv4/IPv6 addresses, CIDR networks, C<unix:> for
peers on a Unix-domain socket (not trusted otherwise), or C<*> for every
peer. When the option is not given, the C<FORWARDED_ALLOW_IPS> environment
variable is used if set, else C<127.0.0.1,::1>.

The client is the right-most C<X-Forwarded-For> address that is not
itself a trusted proxy (the left-most when all are): entries to its left
were written by the client and are never believed. A header that does not
parse is ignored whole.

C<forwarded_header> takes all of this from the standard C<Forwarded>
header (RFC 7239) instead, with the same rule for its C<for=> elements,
and ignores C<X-Forwarded-*>. Off by default because a proxy that only
sets C<X-Forwarded-For> passes a client's own C<Forwarded> through.

C<forwarded_host> also takes the host from C<X-Forwarded-Host> (or
C<Forwarded>'s C<host=>): C<server> becomes C<[host, port]> and the C<host>
request header is replaced. Off by default for the same reason.

C<forwarded_header> and C<forwarded_host> need C<proxy_headers>. Only
C<client>, C<scheme> and, with C<forwarded_host>, C<server> and the C<host>
header change; see L<PAGI::Server::ProxyHeaders> for the exact rules.

=item root_path ['']

The mount point of the app (PSGI's C<SCRIPT_NAME>), set as C<root_path>
in every scope. C<path> is left as received.

=item quiet [0]

Suppresses the banner, info logs and the default access log.

=item access_log [\*STDERR], access_log_format [clf]

Filehandle for one line per finished request (C<undef> disables). Formats:
C<clf>, C<common>, C<combined>, C<tiny>, C<json> or a string of atoms; see
L<PAGI::Server::AccessLog>. Lines are collected while a batch of events is
dispatched and written once per batch.

=item log_level [info]

C<debug>, C<info>, C<warn> or C<error>. See L</LOGGING>.

=item loop_type

IO::Async loop class used by L</run> (C<Epoll>, C<Poll>, ...), also what
C<< IO::Async::Loop->new >> returns to the app from then on. If that was
called before C<run> and made a loop of another class, C<run> logs a warning:
code holding that loop would wait on a loop that never runs. C<pagi-server
--loop> makes the loop before it loads the app, so an app may call
C<< IO::Async::Loop->new >> while it loads. With C<workers> this is the
workers' loop; the master, which only forks, reaps and relays signals,
runs on L<IO::Async::Loop::Poll> (Epoll's unsafe signal handlers crashed it
under the steady SIGCHLD of recycled workers).

=item max_body_size [10_000_000]

Largest request body; larger ones get 413. 0 means unlimited.

=item max_header_size [8192], max_header_count [100], max_request_line_size [8192]

Request head limits (431, 431, 414).

=item timeout [60]

Seconds a keep-alive connection may idle between requests (0 = forever).
It is also the write stall timer of every connection (HTTP, SSE and
WebSocket alike): output that makes no progress for this long, because
the client stopped reading, closes the connection and frees its slot; the
app sees C<http.disconnect> (or C<websocket.disconnect> 1006) with reason
C<write_timeout>.

=item header_timeout [30]

Seconds a client has to send a complete request head, counted from its
first byte (0 = forever); the slowloris guard. The same deadline bounds
the other reads the server makes on its own before or after the app's part:
a small request body read together with its head, and an unread body
skipped after the response to keep the connection alive. A TLS handshake
must finish within it too. At most 8 empty lines may precede a request line.

=item body_timeout [60]

Seconds a client may stall while the app waits for request-body bytes;
then 408 (if no response started) and close, reason C<client_timeout>.

=item request_timeout [0]

A stall timer: closes a request that sees no read or write progress for
this many seconds (0 = off). Any byte read or written resets it, so a slow
but steady download is never cut off.

=item max_connections [0, meaning 1000]

Concurrent connections per process, TLS handshakes in progress included.
Beyond it a new connection gets C<503 Service Unavailable> with
C<Retry-After: 5> and is closed (on a TLS listener the handshake is
completed first, so the answer is readable); existing connections are
unaffected.

=item write_high_watermark [65536], write_low_watermark [16384]

Response bytes buffered per connection at which C<$send> starts to wait,
and below which it resumes.

=item server_header [PAGI-Server-Native/VERSION]

Value of the C<server> response header when the app sets none; empty
string for none.

=item shutdown_timeout [30]

Grace period for requests in flight at shutdown, and bound on lifespan
shutdown.

=item max_ws_frame_size [16 MiB]

Largest WebSocket message (whole message, not just one frame); a bigger
one closes the connection with 1009.

=item ws_ping_interval [20], ws_ping_timeout [20]

Server pings on every WebSocket, and how long a pong may take before the
peer is dropped (C<websocket.disconnect> 1006, C<keepalive_timeout>). 0
turns either off. An app's C<websocket.keepalive> event overrides them for
its connection.

=item group_overflow [drop], group_max_buffered [1 MiB]

The slow-member policy of the C<groups> extension: a group message that
finds a member's connection with more than C<group_max_buffered> bytes
unwritten is not queued for it; with C<drop> the member is closed
(WebSocket 1008, SSE C<queue_overflow>), with C<skip> it misses that
message. See L<PAGI::Server::Groups>.

=item pubsub [none], pubsub_prefix [pagi:]

C<redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]> (or C<rediss://> for TLS;
C<?ca=/path/ca.pem> trusts only that CA instead of the system's roots):
group messages cross workers and machines through Redis PUBLISH/SUBSCRIBE,
the C<groups> extension's C<backend> becomes C<redis>, C<cluster_count>
counts the members of every live node, and C<< $hub->redis(...) >> runs
commands (the Redis session store of L<PAGI::Simple> uses it). The Redis
client runs in the engine: no Perl Redis module is needed. Each process
(each worker) is a node with its own id; it ignores its own echoes. When
Redis goes away the engine reconnects with backoff (50 ms doubling to 2
s), logs the loss and the return with the number of publishes that could
not reach other nodes meanwhile, and fails each such publish's Future
(local members still get the message). C<pubsub_prefix> starts every key
and channel, so applications can share one Redis. A bad URL is refused by
C<new> (its message never shows the password).

=item max_receive_queue [1000]

Accepted for compatibility: the engine hands WebSocket messages to Perl
only as the app takes them (at most 16 messages and 1 MiB ahead; see
L<PAGI::Server::WebSocket> for the whole per-connection bound), so no queue
builds up to this bound and 1008 is never needed.

=item extensions [{}]

Extra extensions to advertise; only C<< { fullflush => {} } >> is
available (the C<http.fullflush> event then forces queued bytes out).

=item validate_events [1 when PAGI_ENV is development, else 0]

Type-checks every field of every event the app sends, failing the C<$send>
with a message naming the event and field (L<PAGI::Server::Validate>).
Order and required fields are always checked.

=item sync_file_threshold [65536]

Accepted for compatibility and otherwise unused: regular files are sent
with sendfile(2) by the engine and never block the loop, whatever their
size (see L</SCOPES> for other handles).

=item lifespan_mode [auto], lifespan_startup_timeout [30]

C<auto>: an app that does not handle lifespan is fine; C<on>: it must;
C<off>: never send lifespan events.

=back

=head1 METHODS

=head2 listen

    $server->listen->get;

Binds the sockets (so L</port> is known at once), installs the signal
handlers (see L</SIGNALS>), runs lifespan startup, then starts the engine.
Returns a Future that fails with C<Lifespan startup failed: MESSAGE> or
C<Cannot listen on ADDRESS: REASON> (the handlers are then removed again).
With C<workers>, it binds, forks the workers and returns at once (each
worker runs its own lifespan); the master then supervises them from the
loop the server was added to.

So the embedding pattern behaves as L</run> does, workers included:

    my $loop   = IO::Async::Loop->new;
    my $server = PAGI::Server->new(app => $app, workers => 2, port => 8080);
    $loop->add($server);
    $server->listen->get;
    $loop->run;          # returns after a graceful shutdown on TERM/INT/QUIT
    exit 0;

After a graceful shutdown caused by a signal (or, with workers, when no
worker could start) the server stops the loop it was added to, so the
caller's C<< $loop->run >> returns and the script goes on (normally to its
end); by then every worker has exited and no socket of the server is open.
A shutdown the caller starts with L</shutdown> leaves the loop running. The
signal handlers are removed once the server has shut down, or when it is
removed from its loop.

=head2 configure

    $server->configure(log_level => 'debug', app => $new_app);

As L<IO::Async::Notifier/configure>: takes server options (checked as
C<new> checks them; an unknown key croaks naming it) and the notifier's own
C<notifier_name> and C<on_error>. Before L</listen> every option may
change. Once listening, only options read per request or per log line may:
C<app> (the next request gets it), C<access_log>, C<access_log_format>,
C<quiet>, C<log_level>, C<validate_events>, C<extensions>, C<root_path>,
C<proxy_headers>, C<forwarded_allow_ips>; another option croaks C<cannot be
changed once the server is listening> unless given its current value. With
workers, a change reaches only workers started afterwards.

=head2 has_tls, has_http2

    PAGI::Server->has_tls;     # 1: rustls is built into the engine
    PAGI::Server->has_http2;   # 0: not built yet

Class methods saying what the engine was built with (from
L<PAGI::Server::Native/build_info>), as on the reference server.

=head2 bind_listeners

    $server->bind_listeners;

Binds (or adopts) the listening sockets now, without starting anything;
L</listen> and L</run> use them. pagi-server calls it before daemonizing
and dropping privileges. Dies with C<Cannot listen on ADDRESS: REASON>.

=head2 shutdown

Returns a Future: stops accepting, lets requests in flight finish within
C<shutdown_timeout>, runs lifespan shutdown.

=head2 run

Creates a loop if the server has none (of the class C<loop_type> names),
listens (which installs the signal handlers, see L</SIGNALS>) and runs the
loop until the server has shut down, whatever the cause.
Returns the exit code: 0 after a clean shutdown; with workers, 2 when no
worker could start.

=head2 port

The port of the first TCP listener (before binding: the configured one).

=head2 socket_path

The path of the first Unix-domain listener, or undef.

=head2 listeners

    my $specs = $server->listeners;
    # [ { type => 'tcp', host => '127.0.0.1', port => 5000 },
    #   { type => 'unix', path => '/run/app.sock' } ]

The listeners, normalised; after binding, with the actual addresses
(ports chosen by the kernel, inherited sockets described).

=head2 is_running

1 while serving.

=head2 connection_count

Open client connections.

=head2 groups

    my $hub = $server->groups;

The L<PAGI::Server::Groups> hub of this server (also in every scope as
C<< $scope->{extensions}{groups}{hub} >>): publish to groups, subscribe
to them in Perl, count members. Usable before L</listen> (in lifespan
startup, say); with C<workers> each worker has its own.

=head1 WORKERS

With C<workers =E<gt> N> the process that calls L</run> or L</listen>
becomes a master: it binds the sockets, forks N workers and supervises
them; it never starts an engine and never runs the app. Each worker, after the fork, makes a fresh IO::Async loop,
builds its own engine on the inherited sockets and runs its own lifespan,
whose scope has C<< pagi => { is_worker => 1, worker_num => 1..N } >>. So
state set at lifespan startup is per worker, and an app that keeps a loop
it got at load time (before the fork) must fetch it again at startup.

A worker that dies is replaced (with a growing delay if it keeps dying); one
that fails to start (exit code 2: lifespan startup failed, cannot bind) is
not, and when none is left the master exits 2. See
L<PAGI::Server::Workers> for supervision, heartbeat and hot restart.

=head2 reuseport

With C<reuseport> the master binds one C<SO_REUSEPORT> socket per worker
slot (worker_num) and keeps it; worker N accepts only on slot N's socket,
and the kernel spreads new connections over the slots. A worker that is
replaced (HUP, C<max_requests>, a crash) hands its slot to its
replacement: connections the kernel queued on it wait for the new worker
instead of being reset. A HUP or C<max_requests> replacement is started
first and the old worker stops accepting only once the new one accepts
too, so the old one serves at most a few requests past C<max_requests>
while its replacement starts.

A slot is closed when no worker will serve it again (TTOU, a worker that
failed to start, shutdown, the old master after a hot restart). Linux
resets the connections still queued on a reuseport socket when it closes,
unless the sysctl C<net.ipv4.tcp_migrate_req> is 1, which moves them to
another socket of the group. The draining worker closes its copy at once
and the engine's copy goes as soon as it has taken what was queued, so the
window is the moment between its last accept and the close: a connection
arriving at that slot just then can be reset. Only scaling down, startup
failures and hot restarts have it; set C<net.ipv4.tcp_migrate_req=1> to
remove it.

=head1 SIGNALS

Installed by L</listen>, so under L</run> and in an embedding script alike:

    signal        single process             workers (sent to the master)
    TERM/INT/QUIT graceful shutdown          graceful shutdown of every worker
    HUP           ignored (logged)           rolling restart, one worker at a time
    TTIN/TTOU     ignored                    one more / one fewer worker (min 1)
    USR2          ignored (logged)           hot restart: a new master takes over
                                             the sockets; the old one drains

Workers ignore INT (the master coordinates; Ctrl-C reaches the whole
process group) and stop gracefully on TERM or QUIT, whatever the IO::Async
loop (Epoll, Poll, Select, ...), running their lifespan shutdown. A worker
still running C<shutdown_timeout> + 1 seconds after being told to stop is
killed.

The handlers are IO::Async signal watches (C<attach_signal>), so an app
can attach its own next to them. With L<IO::Async::Loop::Epoll> the
watched signals stay blocked while the server runs (the loop takes them in
C<epoll_pwait>); a program the app starts inherits that mask, so unblock
them in the child before C<exec> if it relies on them.

=head1 LOGGING

Log lines go through C<warn>, so C<$SIG{__WARN__}>, L<Test::Warn> and log
collectors see them; with no handler they land on STDERR. Each is one line,
C<[pagi-server] LEVEL: MESSAGE> (C<[pagi-server worker N]> in a prefork
worker), filtered by C<log_level>; C<quiet> keeps only C<warn> and
C<error>. Messages use the reference server's wording where a user would
search for it: C<PAGI application error: MESSAGE (GET /path)>, C<PAGI
application returned without starting a response (GET /path)>, C<Lifespan
startup timed out after Ns>, C<Lifespan app failed after startup: MESSAGE>,
C<Lifespan not supported, continuing without it (...)>, C<Lifespan
shutdown timed out after Ns>. The access log is not a log line: it is
written straight to its filehandle.

An app callback that dies while the server dispatches an engine event (an
C<on_done> on a C<$receive> or C<$send> Future, say) is caught for that
event and logged as C<PAGI application error in a callback (GET /path):
MESSAGE>; its request ends as after an app exception (500 if no response
started, else the connection is closed), and the rest of the batch is
served. It never ends the process.

=head1 FUTURE::IO

Apps may await L<Future::IO> (C<sleep>, C<sysread>, ...): loading
PAGI::Server loads L<Future::IO::Impl::IOAsync> (PAGI-SPEC 8.3), which
ships with IO::Async, unless the program already chose an implementation.
It runs on C<< IO::Async::Loop->new >>, the loop L</run> creates.

=head1 WEBSOCKETS

A GET request with C<Upgrade: websocket>, C<Connection: upgrade>, a valid
C<Sec-WebSocket-Key> and C<Sec-WebSocket-Version: 13> opens a C<websocket>
scope (PAGI-SPEC 3.2); another version gets 426, a POST or a bad key 400.
The engine (tokio-tungstenite) handles masking, fragmentation, UTF-8
validation (1007), control frames, ping/pong and the close handshake, and
closes with 1002 on protocol violations and 1009 on oversized messages.
permessage-deflate is not implemented: an offer is declined by answering
without the extension. The C<websocket.http.response> extension (an HTTP
denial response instead of the handshake) is always advertised.
Graceful shutdown tells the app (C<websocket.disconnect> 1001,
C<server_shutdown>) and then closes with 1001.

=head1 SHUTDOWN

C<shutdown> (or SIGTERM/SIGINT under L</run>) stops accepting at once and
still serves connections the kernel had already queued, closes idle
keep-alive connections, and lets requests in flight finish within
C<shutdown_timeout>. Requests whose body was read get
C<< { type => 'http.disconnect', reason => 'server_shutdown' } >> from
C<$receive> at the start of the grace period, so long-lived responses can
say goodbye. Then the rest is closed and lifespan shutdown runs.

=head1 SCOPES

Every http scope carries C<type>, C<pagi>, C<http_version>, C<method>,
C<scheme>, C<path> (percent-decoded, then UTF-8 decoded when valid),
C<raw_path>, C<query_string>, C<root_path>, C<headers> (lower-case names in
wire order, duplicates kept, C<cookie> headers joined with C<"; ">),
C<client>, C<server>, C<state> (a shallow copy of the lifespan state),
C<extensions>, and C<pagi.connection> / C<pagi.transport> (one object
serving both interfaces, see L<PAGI::Server::HTTP>).

File bodies (C<file> or C<fh>, with C<offset> and C<length>) from a
regular file are sent by the engine with sendfile(2): their bytes never
pass through Perl. Any other handle (an in-memory C<open my $fh, '<',
\$scalar>, a tied handle, a pipe, or a C<file> naming a FIFO or device) is
read in Perl in 64 KiB chunks and streamed with backpressure: at most about
C<write_high_watermark> plus a chunk is buffered for a slow client. The
C<$send> Future is done once the last chunk is queued (the app may then
close the handle); a read error fails it, and cuts the connection if part
of the body was already sent. Such reads are synchronous: a handle that
blocks (a pipe with a slow writer) blocks the loop while it does.

=head1 GROUPS

Every http, websocket and sse scope advertises the C<groups> extension
(C<< $scope->{extensions}{groups} >>, with C<backend>, C<node> and
C<hub>): WebSocket connections and SSE streams join named groups with the
C<groups.join> event, and C<groups.publish> (from any of the three scope
types) has the engine encode the message once per protocol and write it
to every member, with a bounded, documented policy for slow members
(C<group_overflow>, C<group_max_buffered>). Events, fields, the policy and
the counters are documented in L<PAGI::Server::Groups>. Groups are per
process: with C<workers> each worker has its own members, and the startup
banner warns about it.

=head1 SEE ALSO

L<pagi-server>, L<PAGI::Server::Native>, L<PAGI::Server::Groups>, L<PAGI::Server::Workers>,
L<PAGI::Server::Listen>, L<PAGI::Server::ProxyHeaders>.

=cut
