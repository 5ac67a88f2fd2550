package PAGI::Server::Runner;
use strict;
use warnings;

our $VERSION = '0.01';

use Cwd ();
use File::Basename ();
use Fcntl qw(O_CREAT O_EXCL O_NOFOLLOW O_NONBLOCK O_RDONLY O_WRONLY);
use File::Spec;
use Getopt::Long ();
use POSIX ();
use Scalar::Util ();
use overload ();

use PAGI::Server::Config;

=head1 NAME

PAGI::Server::Runner - the command line of pagi-server

=head1 SYNOPSIS

    exit PAGI::Server::Runner->run(@ARGV);

=head1 DESCRIPTION

Parses C<pagi-server> options (PAGI-SPEC section 8), loads the app, builds
a L<PAGI::Server> and runs it. All logic of C<bin/pagi-server> is here so
it can be tested. C<run> returns the process exit code: 0 after a clean
shutdown, 2 for anything that stops the server from starting (a bad flag,
a missing app file, a busy port, a failed lifespan startup), each reported
as one line on STDERR, and 1 when the server failed while running.
Without an app (no C<--app>, C<-e> or app argument) it serves the current
directory with L<PAGI::App::Directory> (PAGI-SPEC 8.3); an app file that
does not exist is still an error.

One table below lists every flag: it drives both the option parser and
C<--help>, whose defaults come from the option registry
(L<PAGI::Server::Config>), so neither can drift from the other. The
manual page is the POD of F<bin/pagi-server> (C<perldoc pagi-server>):
a flag added here needs its C<=item> there, with the same default, which
F<t/cli-pod.t> checks against C<--help>.

With C<--pid>, the file is written to a new file in its directory and
renamed into place (a symlink at the path is replaced, never followed) and
chowned through its handle; a hot-restarted master writes it only when it
takes over. With C<--user>, the TLS files are read before privileges are
dropped (L<PAGI::Server> hands their text to the engine), the user's
supplementary groups are set, and C<--reuseport> works with it on any
port: the master binds every worker slot's socket before privileges drop
(a slot added later by TTIN is bound as the user; the kernel refuses that
for a port below 1024, and the refusal is logged).

=cut

# @INC and the script as this process started, for re-executing itself
# (hot restart, --reload): the -I flags on perl's command line are replayed.
my @BOOT_INC = grep { !ref } @INC;

# [ Getopt spec, target, ARG label, help, default text ]
# target: "opt:NAME" sets server option NAME; "run:KEY" is the runner's own;
# "alias:FLAG" is a documented alias of the flag FLAG.
# A missing default text for an option means: the registry's default.
my @FLAGS = (
    [ 'App' ],
    [ 'a|app=s',       'run:app',    'FILE',   'the app: a file returning a code reference (or defining `async sub app`), a .psgi file (a PSGI app, run through PAGI::App::WrapPSGI), or a Module::Name built with key=value arguments; also accepted as the first argument', 'none: the current directory is served (PAGI::App::Directory)' ],
    [ 'e=s',           'run:eval',   'CODE',   'inline app: Perl code returning the app code reference (-M modules are in scope)', 'none' ],
    [ 'M=s@',          'run:module', 'MODULE[=imports]', 'load MODULE before the app (repeatable)', 'none' ],
    [ 'I|lib=s@',      'run:lib',    'DIR',    'add DIR to @INC (repeatable)', 'none' ],
    [ 's|server=s',    'run:server', 'CLASS',  'server class', 'PAGI::Server' ],
    [ 'E|env=s',       'run:env',    'MODE',   'development, production or none; production turns the default access log off', 'PAGI_ENV, else development when STDIN is a terminal, else production' ],
    [ 'default-middleware!', 'run:default_middleware', '', 'in development, wrap the app in PAGI::Middleware::Lint when it is installed', 'on' ],
    [ 'future-xs',     'run:future_xs', '',    'use Future::XS (sets PAGI_FUTURE_XS=1 before modules load)', 'off' ],
    [ 'reload',        'run:reload', '',       "development only: restart when a .pl, .pm or .psgi file under the app's directory changes (polled every 0.5 s; not with --workers)", 'off' ],

    [ 'Listening' ],
    [ 'o|host=s',      'opt:host',   'HOST',   'address to bind (:: for IPv6)' ],
    [ 'p|port=i',      'opt:port',   'N',      'port to bind (0 picks a free one)' ],
    [ 'socket=s',      'opt:socket', 'PATH',   'listen on a Unix-domain socket instead (a stale socket file is replaced; removed at exit)', 'none' ],
    [ 'socket-mode=s', 'run:socket_mode', 'MODE', 'octal mode of the Unix socket(s), e.g. 0660', 'from the umask' ],
    [ 'listen=s@',     'run:listen', 'SPEC',   'listen on host:port, [v6]:port or a Unix socket path (starting with / or . ; other bare words are paths too); repeatable; not with --host, --port or --socket', 'none' ],
    [ 'fd=i@',         'run:fd',     'N',      'serve on the inherited listening socket N (repeatable); systemd socket activation (LISTEN_FDS) needs no flag', 'none' ],
    [ 'reuseport',     'opt:reuseport', '',    'SO_REUSEPORT: each worker accepts on its own socket and the kernel spreads connections', 'off' ],
    [ 'b|listener-backlog=s', 'opt:listener_backlog', 'N', 'listen() queue length' ],

    [ 'TLS' ],
    [ 'ssl-cert=s',    'run:ssl_cert', 'FILE', 'PEM certificate chain; with --ssl-key, serves HTTPS on every TCP listener', 'none' ],
    [ 'ssl-key=s',     'run:ssl_key',  'FILE', 'PEM private key (with --ssl-cert)', 'none' ],
    [ 'ssl-ca=s',      'run:ssl_ca',   'FILE', 'PEM CA certificates that sign client certificates', 'none' ],
    [ 'ssl-verify-client=s', 'run:ssl_verify_client', 'MODE', 'client certificates: none, optional or require (needs --ssl-ca)', 'none' ],
    [ 'ssl-min-version=s',   'run:ssl_min_version',   'VERSION', 'TLSv1_2 or TLSv1_3', 'TLSv1_2' ],
    [ 'ssl-ciphers=s', 'run:ssl_ciphers', 'LIST', 'colon-separated cipher suite names (see PAGI::Server)', "the engine's defaults" ],

    [ 'Processes' ],
    [ 'w|workers=s',   'opt:workers', 'N',     'prefork N worker processes (N <= 1: a single process); signals: TERM/INT/QUIT stop, HUP rolling restart, TTIN/TTOU one more/fewer, USR2 hot restart', '1 (single process)' ],
    [ 'max-requests=s', 'opt:max_requests', 'N', 'recycle a worker after N requests, plus up to 10% jitter (0 = never)' ],
    [ 'limit-max-requests=s', 'alias:max-requests', 'N' ],
    [ 'heartbeat-timeout=s', 'opt:heartbeat_timeout', 'N', 'kill and replace a worker whose loop is blocked for N seconds (0 = off)' ],
    [ 'D|daemonize',   'run:daemonize', '',    'detach into the background; output goes to the --access-log FILE, else /dev/null', 'off' ],
    [ 'pid=s',         'run:pid',    'FILE',   'write the pid (after daemonizing) to FILE, never through a symlink; removed at exit', 'none' ],
    [ 'user=s',        'run:user',   'USER',   "run as USER, with USER's supplementary groups, after binding and reading the TLS files (when started as root)", 'none' ],
    [ 'group=s',       'run:group',  'GROUP',  "run as GROUP after binding (when started as root)", "USER's group" ],
    [ 'l|loop=s',      'opt:loop_type', 'NAME', 'IO::Async loop class (Epoll, Poll, ...)', "IO::Async's choice" ],

    [ 'Limits and timeouts' ],
    [ 'max-connections=s', 'opt:max_connections', 'N', 'concurrent connections per process before 503 (0 = 1000)' ],
    [ 'limit-concurrency=s', 'alias:max-connections', 'N' ],
    [ 'max-body-size=s', 'opt:max_body_size', 'N', '413 above N bytes (0 = unlimited)' ],
    [ 'max-header-size=s', 'opt:max_header_size', 'N', '431 above N bytes of headers' ],
    [ 'max-header-count=s', 'opt:max_header_count', 'N', '431 above N headers' ],
    [ 'max-request-line-size=s', 'opt:max_request_line_size', 'N', '414 above N bytes of request line' ],
    [ 'max-ws-frame-size=s', 'opt:max_ws_frame_size', 'N', 'largest WebSocket message in bytes; bigger ones close with 1009' ],
    [ 'ws-max-size=s', 'alias:max-ws-frame-size', 'N' ],
    [ 'max-receive-queue=s', 'opt:max_receive_queue', 'N', 'WebSocket messages queued for the app (accepted; the engine reads only as the app takes them)' ],
    [ 'timeout=s',     'opt:timeout', 'N',     'seconds a keep-alive connection may idle (0 = forever)' ],
    [ 'timeout-keep-alive=s', 'alias:timeout', 'N' ],
    [ 'header-timeout=s', 'opt:header_timeout', 'N', 'seconds to receive a request head (0 = forever)' ],
    [ 'body-timeout=s', 'opt:body_timeout', 'N', 'seconds a client may stall a body the app is reading' ],
    [ 'request-timeout=s', 'opt:request_timeout', 'N', 'close a request with no read or write for N seconds (0 = off)' ],
    [ 'shutdown-timeout=s', 'opt:shutdown_timeout', 'N', 'grace for requests in flight at shutdown' ],
    [ 'timeout-graceful-shutdown=s', 'alias:shutdown-timeout', 'N' ],
    [ 'ws-idle-timeout=s', 'opt:ws_idle_timeout', 'N', 'close an idle WebSocket (not supported yet)' ],
    [ 'sse-idle-timeout=s', 'opt:sse_idle_timeout', 'N', 'close an idle SSE stream (not supported yet)' ],
    [ 'ws-ping-interval=s', 'opt:ws_ping_interval', 'N', 'seconds between server pings on WebSockets (0 = off)' ],
    [ 'ws-ping-timeout=s', 'opt:ws_ping_timeout', 'N', 'drop a WebSocket that does not answer a ping within N seconds (0 = never)' ],
    [ 'write-high-watermark=s', 'opt:write_high_watermark', 'N', 'buffered response bytes at which $send waits' ],
    [ 'write-low-watermark=s', 'opt:write_low_watermark', 'N', 'buffered response bytes below which $send resumes' ],
    [ 'group-overflow=s', 'opt:group_overflow', 'POLICY', 'a group member with more than --group-max-buffered bytes unwritten is dropped (drop) or misses the message (skip)' ],
    [ 'group-max-buffered=s', 'opt:group_max_buffered', 'N', 'unwritten bytes above which a group member is too slow for group messages' ],
    [ 'pubsub=s',      'opt:pubsub', 'URL',    'carry group messages (rooms, channels) between workers and machines through Redis: redis://[:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS', 'none (per process); $PAGI_PUBSUB when set' ],
    [ 'pubsub-prefix=s', 'opt:pubsub_prefix', 'PREFIX', 'start of every Redis key and channel the groups use' ],
    [ 'sync-file-threshold=s', 'opt:sync_file_threshold', 'N', 'accepted for compatibility (files are sent with sendfile)' ],
    [ 'lifespan=s',    'opt:lifespan_mode', 'MODE', 'auto, on or off' ],
    [ 'lifespan-startup-timeout=s', 'opt:lifespan_startup_timeout', 'N', 'seconds lifespan startup may take (0 = forever)' ],
    [ 'http2',         'opt:http2', '',        'HTTP/2 (not supported yet)', 'off' ],

    [ 'Behind a proxy' ],
    [ 'proxy-headers', 'opt:proxy_headers', '', 'take client and scheme from X-Forwarded-For/-Proto, from trusted peers only; the client is the right-most untrusted address', 'off' ],
    [ 'forwarded-allow-ips=s', 'opt:forwarded_allow_ips', 'LIST', "trusted proxies: comma-separated addresses and CIDR networks, 'unix:' for Unix-socket peers, or '*' for all", 'FORWARDED_ALLOW_IPS, else 127.0.0.1,::1' ],
    [ 'forwarded-header', 'opt:forwarded_header', '', 'with --proxy-headers: use the RFC 7239 Forwarded header instead of X-Forwarded-*', 'off' ],
    [ 'forwarded-host', 'opt:forwarded_host', '', 'with --proxy-headers: take server and the host header from X-Forwarded-Host (or Forwarded host=)', 'off' ],
    [ 'root-path=s',   'opt:root_path', 'PATH', 'the mount point of the app, set as root_path in every scope', 'empty' ],

    [ 'Logging' ],
    [ 'q|quiet',       'opt:quiet', '',        'no banner, no info logs, no default access log', 'off' ],
    [ 'access-log=s',  'run:access_log', 'FILE', 'append the access log to FILE', 'STDERR in development, off in production' ],
    [ 'no-access-log', 'run:no_access_log', '', 'no access log', 'off' ],
    [ 'access-log-format=s', 'opt:access_log_format', 'F', "clf, common, combined, tiny, json, or atoms such as '%h %r %s %D'" ],
    [ 'log-level=s',   'opt:log_level', 'LEVEL', 'debug, info, warn or error' ],
    [ 'validate-events!', 'opt:validate_events', '', 'type-check every event the app sends', 'on in development, else off' ],
    [ 'server-header=s', 'opt:server_header', 'TEXT', "value of the server response header ('' for none)" ],

    [ 'Information' ],
    [ 'v|version',     'run:version', '',      'print the versions and exit', '' ],
    [ 'help',          'run:help', '',         'print this text and exit', '' ],
);

=head1 METHODS

=head2 flags

    my @flags = PAGI::Server::Runner->flags;

Every flag as a hash: C<long> (name without dashes), C<names> (all
spellings, with dashes), C<option> (the server option it sets, if any),
C<alias_of> (the flag it is an alias of, if any), C<default> (as shown in
C<--help>, undef for flags without one). For tests and documentation.

=cut

sub flags {
    my @out;
    for my $f (grep { @$_ > 1 } @FLAGS) {
        my ($spec, $target) = @$f;
        my ($names) = $spec =~ /\A([\w|-]+)/;
        my @names = split /\|/, $names;
        my ($long) = grep { length > 1 } @names;
        $long //= $names[0];
        my ($kind, $what) = split /:/, $target, 2;
        push @out, {
            long     => $long,
            names    => [ map { (length > 1 ? '--' : '-') . $_ } @names ],
            option   => $kind eq 'opt' ? $what : undef,
            alias_of => $kind eq 'alias' ? $what : undef,
            default  => $kind eq 'alias' ? undef : _default_text($f),
        };
    }
    return @out;
}

sub _default_text {
    my ($f) = @_;
    my (undef, $target, undef, undef, $text) = @$f;
    return $text if defined $text;
    my ($kind, $name) = split /:/, $target, 2;
    return undef unless $kind eq 'opt';
    my $value = PAGI::Server::Config->default($name);
    return 'none' unless defined $value;
    return $value eq '' ? 'empty' : $value;
}

=head2 usage

The C<--help> text.

=cut

sub usage {
    my $text = "Usage: pagi-server [options] [APP] [key=value ...]\n";
    for my $f (@FLAGS) {
        if (@$f == 1) {
            $text .= "\n$f->[0]:\n";
            next;
        }
        my ($spec, $target, $arg, $help) = @$f;
        my ($names, $type) = $spec =~ /\A([\w|-]+)(.*)\z/;
        my @names = split /\|/, $names;
        my $shown = join ', ', map {
            length > 1 ? ($type eq '!' ? "--[no-]$_" : "--$_") : "-$_"
        } @names;
        $shown = "    $shown" unless length $names[0] == 1;
        $shown .= " $arg" if length($arg // '');
        my ($kind, $what) = split /:/, $target, 2;
        if ($kind eq 'alias') {
            $help = "alias of --$what";
        }
        else {
            my $default = _default_text($f);
            $help .= " (default: $default)" if defined $default && length $default;
        }
        $text .= _wrap("  $shown", $help);
    }
    return $text;
}

# "  --flag ARG" then the help text wrapped at 79 columns from column 32.
sub _wrap {
    my ($left, $help) = @_;
    my $indent = 32;
    my @words = split /\s+/, $help;
    my @lines;
    my $line = length $left < $indent - 1 ? $left . (' ' x ($indent - length $left)) : undef;
    push @lines, $left unless defined $line;
    $line //= ' ' x $indent;
    my $empty = 1;
    for my $word (@words) {
        if (!$empty && length($line) + 1 + length($word) > 79) {
            push @lines, $line;
            $line = (' ' x $indent) . $word;
            next;
        }
        $line .= ($empty ? '' : ' ') . $word;
        $empty = 0;
    }
    push @lines, $line;
    return join('', map { "$_\n" } @lines);
}

=head2 run

    my $exit_code = PAGI::Server::Runner->run(@ARGV);

=cut

sub run {
    my ($class, @argv) = @_;
    my @original = @argv;
    my (%o, %server);
    defined(my $error = $class->_parse(\@argv, \%o, \%server)) or return $class->_info(\%o);
    return _fail(2, $error) if length $error;

    # Re-executing this program (hot restart, --reload) needs the script
    # that called us; a program embedding the runner has none to offer.
    my $caller = (caller)[1] // '';
    if ($caller ne '' && -f $caller && Cwd::abs_path($caller) eq (Cwd::abs_path($0) // '')) {
        $o{exec} = [ $^X, (map {"-I$_"} @BOOT_INC), Cwd::abs_path($0), @original ];
    }

    $error = $class->_finish_options(\%o, \%server);
    return _fail(2, $error) if $error;
    my @positional = grep { !/=/ } @argv;
    $o{app} //= shift @positional unless defined $o{eval};
    $o{app_args} = [ map { [ split /=/, $_, 2 ] } grep {/=/} @argv ];
    print STDERR "pagi-server: ignoring extra argument '$_'\n" for @positional;

    if ($o{reload} && !$ENV{PAGI_RELOAD_CHILD}) {
        return _fail(2, '--reload and --workers are exclusive') if $server{workers};
        return _fail(2, '--reload needs to re-execute pagi-server; run it from the command line') unless $o{exec};
        require PAGI::Server::Reload;
        # The supervisor is the process to signal: the pid file is its.
        my $pid_file = defined $o{pid} ? File::Spec->rel2abs($o{pid}) : undef;
        return _fail(2, $@) if $pid_file && !eval { _write_pid($pid_file); 1 };
        my $code = PAGI::Server::Reload->supervise(
            command => $o{exec},
            dir     => $class->_app_dir(\%o),
            quiet   => $server{quiet},
            grace   => ($server{shutdown_timeout} // PAGI::Server::Config->default('shutdown_timeout')) + 2,
        );
        _remove_pid($pid_file);
        return $code;
    }
    return $class->_start(\%o, \%server);
}

# Everything after parsing: load, build, bind, detach, run.
sub _start {
    my ($class, $o, $server) = @_;
    unshift @INC, map { File::Spec->rel2abs($_) } @{ $o->{lib} || [] };
    if ($o->{future_xs}) {
        $ENV{PAGI_FUTURE_XS} = 1;
        return _fail(2, '--future-xs: Future::XS is not installed') unless eval { require Future::XS; 1 };
    }
    # A Redis URL with a password can come from the environment instead of
    # the command line, where any user's ps would show it.
    $server->{pubsub} //= $ENV{PAGI_PUBSUB} if defined $ENV{PAGI_PUBSUB} && length $ENV{PAGI_PUBSUB};
    my $env = $o->{env} // $ENV{PAGI_ENV} // (-t STDIN ? 'development' : 'production');
    return _fail(2, '--env must be development, production or none') unless $env =~ /\A(?:development|production|none)\z/;
    $ENV{PAGI_ENV} = $env;

    # The --loop loop exists before the app loads: an app that calls
    # IO::Async::Loop->new while loading gets the loop the server runs on.
    if (defined $server->{loop_type}) {
        require PAGI::Server;
        return _fail(2, "--loop $server->{loop_type}: cannot load that loop class: " . ($@ =~ s/\n.*//sr))
            unless eval { PAGI::Server::_loop_of_type($server->{loop_type}); 1 };
    }
    my $app = eval { $class->_load(%$o) };
    return _fail(2, $@) unless $app;
    $app = _default_middleware($app) if $env eq 'development' && ($o->{default_middleware} // 1);

    if ($o->{no_access_log}) {
        $server->{access_log} = undef;
    }
    elsif (defined $o->{access_log}) {
        open my $fh, '>>', $o->{access_log} or return _fail(2, "cannot open access log $o->{access_log}: $!");
        $fh->autoflush(1);
        $server->{access_log} = $fh;
    }
    elsif ($env eq 'production') {
        $server->{access_log} = undef;
    }

    my ($uid, $gid, $groups);
    if (defined $o->{user} || defined $o->{group}) {
        ($uid, $gid, $groups) = eval { _ids($o->{user}, $o->{group}) };
        return _fail(2, $@) if $@;
    }

    my $server_class = $o->{server} // 'PAGI::Server';
    return _fail(2, "--server: '$server_class' is not a class name")
        unless $server_class =~ /\A[A-Za-z_]\w*(?:::\w+)*\z/;
    (my $file = "$server_class.pm") =~ s{::}{/}g;
    return _fail(2, "cannot load server class $server_class: $@") unless eval { require $file; 1 };
    my $obj = eval { $server_class->new(%$server, app => $app) };
    return _fail(2, $@) unless $obj;
    if ($o->{exec} && $server_class->isa('PAGI::Server')) {
        require PAGI::Server::Workers;
        PAGI::Server::Workers->exec_command($o->{exec});
    }
    # From the bind (a client or supervisor may act as soon as the port
    # answers or the pid file exists) until the server's loop watches them,
    # the signals it handles wait blocked: a TERM then still stops it
    # gracefully and removes the pid file instead of killing it outright.
    # The loop unblocks them (or, Epoll, takes them blocked in epoll_pwait).
    if ($obj->isa('PAGI::Server')) {
        POSIX::sigprocmask(POSIX::SIG_BLOCK(), POSIX::SigSet->new(map { POSIX->can("SIG$_")->() } PAGI::Server->handled_signals));
    }
    # Bind first: a busy port is reported here, on the terminal, before
    # daemonizing and before privileges are dropped.
    if ($obj->can('bind_listeners')) {
        return _fail(2, $@) unless eval { $obj->bind_listeners; 1 };
    }
    if ($o->{daemonize} && !$ENV{PAGI_MASTER_PID}) {    # a hot-restarted master is detached already
        my $ok = eval { _daemonize($o->{access_log}); 1 };
        return _fail(2, $@) unless $ok;
    }
    my $pid_file;
    if (defined $o->{pid} && !$ENV{PAGI_RELOAD_CHILD}) {
        $pid_file = File::Spec->rel2abs($o->{pid});
        if ($ENV{PAGI_MASTER_PID} && $server->{workers} && $obj->isa('PAGI::Server')) {
            # A hot restart: the file names the old master until this one
            # has taken over, so a failed restart leaves it as it was.
            require PAGI::Server::Workers;
            my $file = $pid_file;
            PAGI::Server::Workers->on_take_over(sub { _write_pid($file, $uid, $gid) });
        }
        else {
            return _fail(2, $@) unless eval { _write_pid($pid_file, $uid, $gid); 1 };
        }
    }
    if (defined $uid || defined $gid) {
        my $ok = eval { _drop_privileges($uid, $gid, $groups, $obj); 1 };
        unless ($ok) { _remove_pid($pid_file); return _fail(2, $@) }
    }
    my $code = eval { $obj->run };
    my $run_error = $@;
    _remove_pid($pid_file);
    # run dies only before serving (lifespan startup failed, no worker started).
    return _fail(2, $run_error) unless defined $code;
    return $code;
}

# Prints one line: "pagi-server: MESSAGE" (multi-line messages are joined).
sub _fail {
    my ($code, $message) = @_;
    $message =~ s/ at \S+ line \d+\.?\n?\z//;
    $message =~ s/\s*\n\s*(?=\S)/; /g;
    $message =~ s/\s+\z//;
    $message =~ s/\APAGI::Server: //;
    print STDERR "pagi-server: $message\n";
    return $code;
}

# --help and --version: return 0 after printing.
sub _info {
    my ($class, $o) = @_;
    if ($o->{help}) {
        print usage();
        return 0;
    }
    require PAGI::Server;
    require PAGI::Server::Native;
    my $engine = "PAGI::Server::Native $PAGI::Server::Native::VERSION";
    # The engine may describe its Rust side (tokio, hyper, rustls versions).
    if (my $info = PAGI::Server::Native->can('build_info')) {
        my $b = eval { $info->('PAGI::Server::Native') };
        $engine .= ref $b eq 'HASH' ? ' (' . join(', ', map {"$_ $b->{$_}"} sort keys %$b) . ')'
                 : defined $b       ? " ($b)" : '';
    }
    require IO::Async::Loop;
    printf "pagi-server (PAGI-Server-Native) %s\nengine: %s\nperl %vd, IO::Async %s\n",
        $PAGI::Server::VERSION, $engine, $^V, $IO::Async::Loop::VERSION;
    return 0;
}

# Parses @$argv (leaving positional arguments in it). Returns '' when fine,
# an error line otherwise, or undef for --help/--version.
sub _parse {
    my ($class, $argv, $o, $server) = @_;
    my @specs;
    for my $f (grep { @$_ > 1 } @FLAGS) {
        my ($spec, $target) = @$f;
        my ($kind, $name) = split /:/, $target, 2;
        if ($kind eq 'alias') {
            my ($real) = grep { $_->[0] =~ /(?:\A|\|)\Q$name\E(?:[=!]|\z)/ } grep { @$_ > 1 } @FLAGS;
            ($kind, $name) = split /:/, $real->[1], 2;
        }
        my $store = $kind eq 'opt' ? $server : $o;
        if ($spec =~ /\@\z/) {
            push @specs, $spec => sub { push @{ $store->{$name} }, $_[1] };
        }
        else {
            push @specs, $spec => sub { $store->{$name} = $_[1] };
        }
    }
    my @problems;
    local $SIG{__WARN__} = sub { push @problems, $_[0] };
    Getopt::Long::Configure(qw(no_ignore_case bundling no_auto_abbrev));
    my $ok = Getopt::Long::GetOptionsFromArray($argv, @specs);
    if (!$ok || @problems) {
        my $problem = $problems[0] // 'invalid arguments';
        chomp $problem;
        return "$problem (see pagi-server --help)";
    }
    return undef if $o->{help} || $o->{version};
    return '';
}

# Turns the runner's flags into server options; returns an error line or undef.
sub _finish_options {
    my ($class, $o, $s) = @_;
    $s->{workers} = 0 if defined $s->{workers} && $s->{workers} =~ /\A\d+\z/ && $s->{workers} <= 1;
    for my $bool (qw(quiet reuseport proxy_headers forwarded_header forwarded_host http2)) {
        $s->{$bool} = 1 if $s->{$bool};
    }
    my $mode;
    if (defined $o->{socket_mode}) {
        return "--socket-mode must be an octal mode such as 0660 (got '$o->{socket_mode}')"
            unless $o->{socket_mode} =~ /\A0?[0-7]{3,4}\z/;
        $mode = oct $o->{socket_mode};
    }
    my @listen;
    for my $spec (@{ $o->{listen} || [] }) {
        my $entry = _listen_spec($spec) or return "--listen: cannot parse '$spec'";
        $entry->{socket_mode} = $mode if defined $entry->{socket} && defined $mode;
        push @listen, $entry;
    }
    my @fds = @{ $o->{fd} || [] };
    if (@listen || @fds > 1) {
        $s->{listen} = [ @listen, map { { fd => $_ } } @fds ];
    }
    elsif (@fds) {
        $s->{fd} = $fds[0];
    }
    if (defined $mode && !@listen) {
        return '--socket-mode needs --socket or a Unix path in --listen' unless defined $s->{socket};
        $s->{socket_mode} = $mode;
    }
    my %ssl;
    @ssl{qw(cert_file key_file ca_file verify_client min_version cipher_list)}
        = @$o{qw(ssl_cert ssl_key ssl_ca ssl_verify_client ssl_min_version ssl_ciphers)};
    delete @ssl{ grep { !defined $ssl{$_} } keys %ssl };
    if (%ssl) {
        return '--ssl-cert and --ssl-key must be given together'
            unless defined $ssl{cert_file} && defined $ssl{key_file};
        $s->{ssl} = \%ssl;
    }
    delete @$s{ grep { !defined $s->{$_} } keys %$s };
    return undef;
}

# --listen SPEC (PAGI-SPEC 8.2): "/path" or "./path" (or any bare word) is a
# Unix socket, "[v6]:port" and "host:port" are TCP; "unix:PATH" and "fd:N"
# are accepted too.
sub _listen_spec {
    my ($spec) = @_;
    return { socket => $1 } if $spec =~ /\Aunix:(.+)\z/;
    return { fd => $1 } if $spec =~ m{\Afd:(?://)?(\d+)\z};
    return { socket => $spec } if $spec =~ m{\A[./]};
    return { host => $1, port => $2 } if $spec =~ /\A\[([0-9A-Fa-f:.]+)\]:(\d+)\z/;
    return { host => $1, port => $2 } if $spec =~ /\A([^:\[\]]+):(\d+)\z/;
    return undef if $spec =~ /:/;
    return { socket => $spec };
}

=head2 server_options

    my $options = PAGI::Server::Runner->server_options(@argv);

The L<PAGI::Server> options a command line sets (before the app is
loaded: no C<app>, no access log handle), for tests and debugging. Dies
with the one-line usage error a bad command line gets.

=cut

sub server_options {
    my ($class, @argv) = @_;
    my (%o, %s);
    my $error = $class->_parse(\@argv, \%o, \%s) // '';
    $error ||= $class->_finish_options(\%o, \%s) // '';
    die "$error\n" if length $error;
    return \%s;
}

=head2 load_app

    my $app = PAGI::Server::Runner->load_app($file);

Loads an app file with C<do>. The file either returns a code reference or,
as in the PAGI announcement, defines C<async sub app { ... }>, in which case
C<main::app> is taken. Dies with a one-line message otherwise.

=cut

sub load_app {
    my ($class, $file) = @_;
    my $path = File::Spec->rel2abs($file);
    die "App file not found: $file\n" unless -e $path;
    die "App file is not readable: $file\n" unless -r $path;
    no strict 'refs';
    my $before = defined &{'main::app'} ? \&{'main::app'} : undef;
    my $result = do {
        package main;
        local $0 = $path;
        local @ARGV = ();
        do $path;
    };
    die "Error loading $file: $@" if $@;
    die "Error loading $file: $!\n" if !defined $result && $! && !defined &{'main::app'};
    return $result if ref $result eq 'CODE';
    my $defined = defined &{'main::app'} ? \&{'main::app'} : undef;
    return $defined if $defined && (!$before || $defined != $before || !ref $result);
    die "App file must return a coderef, got: " . (defined $result ? (ref $result || "'$result'") : 'undef')
      . " (or define 'async sub app')\n";
}

=head2 load_psgi

    my $app = PAGI::Server::Runner->load_psgi($file);

How C<pagi-server app.psgi> loads a PSGI file (any app file whose name ends
in C<.psgi>), as plackup does: the file runs with C<do> in a package of its
own, with C<$0> set to it, and must return the PSGI app (a code reference,
an object overloading C<&{}>, or one with C<to_app>, such as a
L<Plack::Component>). The app is wrapped in L<PAGI::App::WrapPSGI>, whose
POD says what the PSGI app gets. IO::Async is loaded and registered as
AnyEvent's backend before the file runs, so an app that sets up AnyEvent
watchers while loading gets the server's loop. Dies with a one-line
message when the file is missing, fails to compile or returns something
else.

=cut

sub load_psgi {
    my ($class, $file) = @_;
    my $path = File::Spec->rel2abs($file);
    die "App file not found: $file\n" unless -e $path;
    die "App file is not readable: $file\n" unless -r $path;
    require PAGI::App::WrapPSGI;
    PAGI::App::WrapPSGI->prepare_event_loop;
    # A package per file, so two files' subs and globals do not meet.
    (my $package = $path) =~ s/([^A-Za-z0-9_])/sprintf '_%02x', ord $1/ge;
    my $psgi = do {
        local $0 = $path;
        local @ARGV = ();
        local $@;
        $! = 0;
        my $result = eval "package PAGI::Server::Runner::PSGI::$package; do \$path";
        die "Error loading $file: $@" if $@;
        die "Error loading $file: $!\n" if !defined $result && $!;
        $result;
    };
    if (Scalar::Util::blessed($psgi) && !overload::Method($psgi, '&{}') && $psgi->can('to_app')) {
        $psgi = $psgi->to_app;
    }
    my $type = Scalar::Util::reftype($psgi) // '';
    die "PSGI file $file must return a code reference (the PSGI app), got: "
        . (defined $psgi ? (ref $psgi || "'$psgi'") : 'undef') . "\n"
        unless $type eq 'CODE' || (Scalar::Util::blessed($psgi) && overload::Method($psgi, '&{}'));
    return PAGI::App::WrapPSGI->new(psgi_app => $psgi)->to_app;
}

# The app from -e, a module name or a file (PAGI-SPEC 8.3), -M modules
# loaded first.
sub _load {
    my ($class, %o) = @_;
    my @uses = map {
        my ($module, $imports) = split /=/, $_, 2;
        die "-M: '$module' is not a module name\n" unless $module =~ /\A[A-Za-z_]\w*(?:::\w+)*\z/;
        "use $module" . (defined $imports ? ' qw(' . join(' ', split /,/, $imports) . ')' : '') . ';';
    } @{ $o{module} || [] };
    if (defined $o{eval}) {
        # One eval: lexical imports such as Future::AsyncAwait's `async`
        # keyword reach the -e code.
        my $app = eval "package main; @uses\n#line 1 \"-e\"\n$o{eval}";
        die "-e: $@" if $@;
        die '-e code must return a code reference, got: ' . (defined $app ? (ref $app || "'$app'") : 'undef') . "\n"
            unless ref $app eq 'CODE';
        return $app;
    }
    for my $use (@uses) {
        next if eval "package main; $use 1";
        my ($module) = $use =~ /\Ause (\S+?)[ ;]/;
        die "cannot load module $module: $@";
    }
    my $spec = $o{app};
    # No app at all: browse the current directory (PAGI-SPEC 8.3).
    return _directory_app() unless defined $spec;
    my $is_file = $spec =~ m{/} || $spec =~ /\.(?:pl|psgi)\z/i || -e $spec
        || $spec !~ /\A[A-Za-z_]\w*(?:::\w+)+\z/;
    return $class->load_psgi($spec) if $is_file && $spec =~ /\.psgi\z/i;
    return $class->load_app($spec) if $is_file;
    (my $file = "$spec.pm") =~ s{::}{/}g;
    require $file;
    die "App module $spec has no new and to_app\n" unless $spec->can('new') && $spec->can('to_app');
    my $app = $spec->new(map {@$_} @{ $o{app_args} || [] })->to_app;
    die "$spec->to_app must return a code reference\n" unless ref $app eq 'CODE';
    return $app;
}

sub _directory_app {
    require PAGI::App::Directory;
    return PAGI::App::Directory->new(root => '.')->to_app;
}

sub _app_dir {
    my ($class, $o) = @_;
    return Cwd::getcwd() unless defined $o->{app} && -e $o->{app};
    return File::Basename::dirname(File::Spec->rel2abs($o->{app}));
}

sub _default_middleware {
    my ($app) = @_;
    return $app unless eval { require PAGI::Middleware::Lint; 1 };
    my $mw = PAGI::Middleware::Lint->new(strict => 1);
    return $mw->can('wrap') ? $mw->wrap($app) : $app;
}

# ===== process management =====

# (uid, gid, supplementary gids) for --user/--group. The groups are the
# ones listing the user as a member (what initgroups(3) sets; POSIX has no
# initgroups, so they are read with getgrent), plus gid itself.
sub _ids {
    my ($user, $group) = @_;
    my ($uid, $gid, $name);
    if (defined $user) {
        my @pw = $user =~ /\A\d+\z/ ? getpwuid($user) : getpwnam($user);
        die "--user: unknown user '$user'\n" unless @pw;
        ($name, $uid, $gid) = @pw[ 0, 2, 3 ];
    }
    if (defined $group) {
        my @gr = $group =~ /\A\d+\z/ ? getgrgid($group) : getgrnam($group);
        die "--group: unknown group '$group'\n" unless @gr;
        $gid = $gr[2];
    }
    my %groups = (defined $gid ? ($gid => 1) : ());
    if (defined $name) {
        setgrent();
        while (my @gr = getgrent()) {
            $groups{ $gr[2] } = 1 if grep { $_ eq $name } split ' ', $gr[3] // '';
        }
        endgrent();
    }
    return ($uid, $gid, [ sort { $a <=> $b } keys %groups ]);
}

sub _drop_privileges {
    my ($uid, $gid, $groups, $server) = @_;
    if ($> != 0) {
        # Already that user (a hot-restarted master runs as who it became).
        return if (!defined $uid || $> == $uid) && (!defined $gid || (split ' ', $))[0] == $gid);
        print STDERR "pagi-server: not running as root: --user/--group ignored\n";
        return;
    }
    # Unix socket files this process created stay usable by the new owner.
    if (my $listeners = $server->{listeners}) {
        for my $l (grep { $_->{owned} && $_->{spec}{type} eq 'unix' } @$listeners) {
            chown $uid // -1, $gid // -1, $l->{spec}{path};
        }
    }
    if (defined $gid) {
        # "egid gid..." sets the effective gid, then setgroups(2) with the rest:
        # the user's supplementary groups, never root's.
        $) = join ' ', $gid, @$groups;
        $( = $gid;
        my %have = map { $_ => 1 } split ' ', $);
        my @missing = grep { !$have{$_} } @$groups;
        die "cannot switch to group $gid" . (@missing ? " with groups @missing" : '') . ": $!\n"
            unless $( == $gid && (split ' ', $))[0] == $gid && !@missing;
    }
    if (defined $uid) {
        POSIX::setuid($uid);
        die "cannot switch to user $uid: $!\n" unless $< == $uid && $> == $uid;
    }
}

# Fork twice (the daemon is no session leader, so it never gets a terminal
# back), setsid, and point the standard handles away from the terminal.
sub _daemonize {
    my ($log_file) = @_;
    STDOUT->flush;
    STDERR->flush;
    defined(my $pid = fork) or die "cannot fork to daemonize: $!\n";
    POSIX::_exit(0) if $pid;
    POSIX::setsid() or die "setsid: $!\n";
    defined($pid = fork) or die "cannot fork to daemonize: $!\n";
    POSIX::_exit(0) if $pid;
    my $out = defined $log_file ? $log_file : File::Spec->devnull;
    open STDIN, '<', File::Spec->devnull or die "reopen STDIN: $!\n";
    open STDOUT, '>>', $out or die "reopen STDOUT: $!\n";
    open STDERR, '>>&', \*STDOUT or die "reopen STDERR: $!\n";
    STDOUT->autoflush(1);
}

# The pid file is never opened through a symlink: the pid goes to a fresh
# file in the same directory (O_EXCL | O_NOFOLLOW, so nothing planted there
# is followed), is chowned through that handle and renamed over FILE. A
# symlink at FILE is therefore replaced, its target untouched.
sub _write_pid {
    my ($file, $uid, $gid) = @_;
    my $chown = (defined $uid || defined $gid) && $> == 0;
    my ($fh, $tmp);
    for (1 .. 10) {
        $tmp = sprintf '%s.%d-%06d.tmp', $file, $$, int rand 1_000_000;
        last if sysopen $fh, $tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644;
        undef $fh;
        last unless $!{EEXIST};
    }
    unless ($fh) {
        # A master that already runs as --user (hot restart) may not write
        # in a root-owned directory; the file itself was chowned to it.
        return _rewrite_pid($file) if $!{EACCES} || $!{EPERM};
        die "cannot write pid file $file: $!\n";
    }
    my $ok = print({$fh} "$$\n") && (!$chown || chown($uid // -1, $gid // -1, $fh));
    $ok = close($fh) && $ok;
    $ok &&= rename $tmp, $file;
    return if $ok;
    my $error = $!;
    unlink $tmp;
    die "cannot write pid file $file: $error\n";
}

# Rewrites an existing pid file in place: only a regular file this user
# owns, opened without following a symlink.
sub _rewrite_pid {
    my ($file) = @_;
    sysopen my $fh, $file, O_WRONLY | O_NOFOLLOW | O_NONBLOCK
        or die "cannot write pid file $file: $!\n";
    my @st = stat $fh;
    die "cannot write pid file $file: not a regular file owned by uid $>\n" unless -f _ && $st[4] == $>;
    my $ok = truncate($fh, 0) && print {$fh} "$$\n";
    $ok = close($fh) && $ok;
    die "cannot write pid file $file: $!\n" unless $ok;
}

# Only our own: after a hot restart the file holds the new master's pid.
sub _remove_pid {
    my ($file) = @_;
    return unless defined $file && sysopen my $fh, $file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK;
    my $pid = <$fh>;
    close $fh;
    unlink $file if defined $pid && $pid =~ /\A(\d+)/ && $1 == $$;
}

1;
