package PAGI::Server::Runner;
use strict;
use warnings;

our $VERSION = '0.01';

use Cwd ();
use File::Spec;
use Getopt::Long ();

=head1 NAME

PAGI::Server::Runner - the command line of pagi-server

=head1 SYNOPSIS

    exit PAGI::Server::Runner->run(@ARGV);

=head1 DESCRIPTION

Parses C<pagi-server> options (PAGI-SPEC section 8), loads the app file,
builds a L<PAGI::Server> and runs it. All logic of C<bin/pagi-server> is
here so it can be tested. C<run> returns the process exit code: 0 after a
clean shutdown, 1 for a failure to start, 2 for usage errors.

=cut

# --long-name => server option; each takes a value.
my %VALUE_OPTIONS = map { my $o = $_; ($o =~ tr/_/-/r) => $o } qw(
    max_body_size max_header_size max_header_count max_request_line_size
    timeout header_timeout body_timeout request_timeout shutdown_timeout lifespan_startup_timeout
    write_high_watermark write_low_watermark listener_backlog log_level
    server_header access_log_format ws_ping_interval ws_ping_timeout
    workers max_connections max_requests max_receive_queue max_ws_frame_size
    ws_idle_timeout sse_idle_timeout heartbeat_timeout
    sync_file_threshold socket socket_mode
);

# Documented aliases borrowed from uvicorn.
my %ALIASES = ('timeout-keep-alive' => 'timeout', 'limit-concurrency' => 'max_connections', 'ws-max-size' => 'max_ws_frame_size');

sub usage {
    return <<'USAGE';
Usage: pagi-server [options] [APP_FILE]

  -a, --app FILE            the app file (also accepted as the first argument);
                            it returns a code reference or defines `async sub app`
  -o, --host HOST           address to bind (default 127.0.0.1; :: for IPv6)
  -p, --port N              port to bind (default 5000; 0 picks a free one)
  -q, --quiet               no banner, no info logs, no default access log
      --access-log FILE     append the access log to FILE (default: STDERR in
                            development mode, off in production)
      --no-access-log       no access log
  -I, --lib DIR             add DIR to @INC (repeatable)
  -M MODULE[=imports]       load MODULE before the app (repeatable)
  -E, --env MODE            development, production or none (default: PAGI_ENV,
                            else development when STDIN is a terminal)
  -l, --loop NAME           IO::Async loop class (Epoll, Poll, ...)
  -b, --listener-backlog N  listen() queue (default 2048)
      --max-body-size N     413 above N bytes (default 10000000; 0 = unlimited)
      --max-header-size N   431 above N bytes of headers (default 8192)
      --max-header-count N  431 above N headers (default 100)
      --timeout N           keep-alive idle seconds (default 60; alias
                            --timeout-keep-alive)
      --header-timeout N    seconds to receive a request head (default 30)
      --body-timeout N      seconds a client may stall a body the app is reading
                            (default 60)
      --request-timeout N   close a request with no read or write for N seconds
                            (default 0 = off)
      --max-connections N   503 beyond N concurrent connections (default 1000;
                            alias --limit-concurrency)
      --shutdown-timeout N  grace for requests in flight at shutdown (default 30)
      --write-high-watermark N, --write-low-watermark N
                            response buffering bounds (default 65536 / 16384)
      --max-ws-frame-size N largest WebSocket message in bytes (default 16 MiB;
                            alias --ws-max-size); bigger ones close with 1009
      --ws-ping-interval N  seconds between server pings on WebSockets (default 20;
                            0 = off)
      --ws-ping-timeout N   drop a WebSocket that does not answer a ping within N
                            seconds (default 20; 0 = never)
      --lifespan MODE       auto, on or off (default auto)
      --lifespan-startup-timeout N  (default 30)
      --access-log-format F clf (default), common, combined, tiny, json, or atoms
                            such as '%h %r %s %D'
      --[no-]validate-events  type-check every event the app sends (default: on
                            in development mode)
      --log-level LEVEL     debug, info, warn or error (default info)
      --server-header TEXT  value of the server header ('' for none)
  -v, --version             print the version and exit
      --help                this text
USAGE
}

=head1 METHODS

=head2 run

    my $exit_code = PAGI::Server::Runner->run(@ARGV);

=cut

sub run {
    my ($class, @argv) = @_;
    my %o = (lib => [], module => []);
    my %server;
    Getopt::Long::Configure(qw(no_ignore_case bundling no_auto_abbrev));
    my $parsed = Getopt::Long::GetOptionsFromArray(\@argv,
        'a|app=s'        => \$o{app},
        'o|host=s'       => \$server{host},
        'p|port=i'       => \$server{port},
        'q|quiet'        => \$o{quiet},
        'access-log=s'   => \$o{access_log},
        'no-access-log'  => \$o{no_access_log},
        'I|lib=s@'       => $o{lib},
        'M=s@'           => $o{module},
        'E|env=s'        => \$o{env},
        'l|loop=s'       => \$server{loop_type},
        'b|listener-backlog=i' => \$server{listener_backlog},
        'lifespan=s'     => \$server{lifespan_mode},
        'validate-events!' => \$server{validate_events},
        'v|version'      => \$o{version},
        'help'           => \$o{help},
        (map { my $name = $_; ("$name=s" => \$server{ $VALUE_OPTIONS{$name} }) } keys %VALUE_OPTIONS),
        (map { my $name = $_; ("$name=s" => \$server{ $ALIASES{$name} }) } keys %ALIASES),
    );
    unless ($parsed) {
        print STDERR "Try 'pagi-server --help'.\n";
        return 2;
    }
    if ($o{help}) { print usage(); return 0 }
    if ($o{version}) {
        require PAGI::Server;
        print "pagi-server (PAGI-Server-Native) $PAGI::Server::VERSION\n";
        return 0;
    }
    my @files = grep { !/=/ } @argv;
    $o{app} //= shift @files;
    print STDERR "pagi-server: ignoring extra argument '$_'\n" for @files;
    unless (defined $o{app}) {
        print STDERR "pagi-server: no app given (pagi-server --app FILE)\n" . usage();
        return 2;
    }

    unshift @INC, map { File::Spec->rel2abs($_) } @{ $o{lib} };
    for my $spec (@{ $o{module} }) {
        my ($module, $imports) = split /=/, $spec, 2;
        my $code = "package main; use $module" . (defined $imports ? ' qw(' . join(' ', split /,/, $imports) . ')' : '') . '; 1';
        unless (eval $code) {
            print STDERR "pagi-server: cannot load module $module: $@";
            return 1;
        }
    }

    my $env = $o{env} // $ENV{PAGI_ENV} // (-t STDIN ? 'development' : 'production');
    unless ($env =~ /\A(?:development|production|none)\z/) {
        print STDERR "pagi-server: --env must be development, production or none\n";
        return 2;
    }
    $ENV{PAGI_ENV} = $env;

    my $app = eval { $class->load_app($o{app}) };
    unless ($app) {
        print STDERR "pagi-server: $@";
        return 1;
    }

    delete @server{ grep { !defined $server{$_} } keys %server };
    $server{quiet} = 1 if $o{quiet};
    if ($o{no_access_log}) {
        $server{access_log} = undef;
    }
    elsif (defined $o{access_log}) {
        open my $fh, '>>', $o{access_log} or do {
            print STDERR "pagi-server: cannot open access log $o{access_log}: $!\n";
            return 1;
        };
        $fh->autoflush(1);
        $server{access_log} = $fh;
    }
    elsif ($env eq 'production') {
        $server{access_log} = undef;
    }

    require PAGI::Server;
    my $server = eval { PAGI::Server->new(%server, app => $app) };
    unless ($server) {
        (my $error = $@) =~ s/ at \S+ line \d+\.?\n\z/\n/;
        print STDERR "pagi-server: $error";
        return 2;
    }
    my $code = eval { $server->run };
    unless (defined $code) {
        (my $error = $@) =~ s/ at \S+ line \d+\.?\n\z/\n/;
        print STDERR "pagi-server: $error";
        return 1;
    }
    return $code;
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

1;
