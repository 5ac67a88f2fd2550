package PAGI::Test::Server;
# Shared helpers for the test suite: a server on 127.0.0.1 port 0 in this
# process, and clients that run on the same IO::Async loop (so the app and the
# client can both make progress while a test waits with ->get).
use strict;
use warnings;

use parent 'Exporter';
use IO::Async::Loop;
use IO::Async::Stream;
use IO::Socket::IP;
use Future;
use Carp ();
use File::Temp ();
use POSIX ();

our @EXPORT_OK = qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for start_child in_child);

my $LOOP;

sub import {
    my $class = shift;
    # Every test file is bounded in time, whatever happens inside it.
    alarm($ENV{PAGI_TEST_TIMEOUT} || 120);
    $class->export_to_level(1, $class, @_);
}

sub loop { $LOOP //= IO::Async::Loop->new }

# start_server(app => $app, %server_options) → ($server, $port)
sub start_server {
    my (%args) = @_;
    require PAGI::Server;
    my $server = PAGI::Server->new(host => '127.0.0.1', port => 0, quiet => 1, %args);
    loop()->add($server);
    $server->listen->get;
    return ($server, $server->port);
}

sub stop_server {
    my ($server) = @_;
    return unless $server && $server->loop;
    $server->shutdown->get;
    $server->loop->remove($server);
}

# raw_exchange($port, $bytes, %opts) → Future of everything the server sent.
# Completes when the server closes, or `until => qr//` matches the received
# bytes, or nothing arrives for `idle` seconds (default: wait for close).
# Fails after `timeout` seconds (default 10). `host` defaults to 127.0.0.1.
# `chunks => [...]` sends several writes with `gap` seconds between them.
sub raw_exchange {
    my ($port, $bytes, %o) = @_;
    my $loop = loop();
    my $sock = IO::Socket::IP->new(PeerHost => $o{host} // '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
        or Carp::croak("connect to port $port: $@");
    my $done = $loop->new_future;
    my $buf = '';
    my $idle_timer;
    my $stream;
    my $finish = sub {
        return if $done->is_ready;
        $loop->unwatch_time($idle_timer) if $idle_timer;
        $done->done($buf);
        $stream->close_now if $stream;
    };
    my $arm_idle = sub {
        return unless $o{idle};
        $loop->unwatch_time($idle_timer) if $idle_timer;
        $idle_timer = $loop->watch_time(after => $o{idle}, code => $finish);
    };
    $stream = IO::Async::Stream->new(
        handle  => $sock,
        on_read => sub {
            my ($s, $in, $eof) = @_;
            $buf .= $$in;
            $$in = '';
            if ($eof) { $finish->(); return 0 }
            if ($o{until} && $buf =~ $o{until}) { $finish->(); return 0 }
            $arm_idle->();
            return 0;
        },
        on_read_eof  => sub { $finish->() },
        on_read_error => sub { $finish->() },
        on_write_error => sub { },
    );
    $loop->add($stream);
    my @chunks = $o{chunks} ? @{ $o{chunks} } : ($bytes);
    my $send; $send = sub {
        my $c = shift @chunks;
        return unless defined $c;
        $stream->write($c);
        if (@chunks) { $loop->watch_time(after => $o{gap} // 0.05, code => $send) }
        elsif ($o{shutdown_write}) { $stream->write('', on_flush => sub { shutdown($sock, 1) }) }
    };
    $send->();
    $arm_idle->();
    my $timeout = $o{timeout} // 10;
    return Future->wait_any(
        $done,
        $loop->delay_future(after => $timeout)->then(sub {
            $stream->close_now;
            $o{partial_ok} ? Future->done($buf) : Future->fail("raw_exchange timed out after ${timeout}s; got: " . substr($buf, 0, 300));
        }),
    );
}

# Splits raw HTTP/1.x response bytes into responses (handles Content-Length,
# chunked and close-delimited bodies). Each: {status, reason, version,
# headers => [[lc name, value]...], header => {lc name => last value},
# body, trailers => [[...]], chunked => 0/1, raw_head}.
sub parse_responses {
    my ($bytes, %o) = @_;
    my @out;
    while (length $bytes) {
        $bytes =~ s/\A(HTTP\/(\d\.\d) (\d{3}) ?([^\r\n]*)\r\n((?:[^\r\n]+\r\n)*)\r\n)//
            or do { push @out, { garbage => $bytes }; last };
        my ($head, $version, $status, $reason, $hdrs) = ($1, $2, $3, $4, $5);
        my @headers = map { /^([^:]+):\s*(.*)$/ ? [ lc $1, $2 ] : () } split /\r\n/, $hdrs;
        my %h = map { $_->[0] => $_->[1] } @headers;
        my $r = { status => $status, reason => $reason, version => $version, headers => \@headers,
                  header => \%h, raw_head => $head, body => '', trailers => [], chunked => 0 };
        push @out, $r;
        next if $status =~ /^1/;
        my $head_req = $o{head} || ($o{no_body_for} && $o{no_body_for}->($r));
        if ($head_req || $status == 204 || $status == 304) { next }
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            $r->{chunked} = 1;
            while ($bytes =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n//) {
                my $n = hex $1;
                if ($n == 0) {
                    while ($bytes =~ s/\A([^\r\n]+)\r\n//) {
                        my $l = $1;
                        push @{ $r->{trailers} }, [ lc($1), $2 ] if $l =~ /^([^:]+):\s*(.*)$/;
                    }
                    $bytes =~ s/\A\r\n// or $r->{incomplete} = 1;
                    last;
                }
                $r->{body} .= substr($bytes, 0, $n, '');
                $bytes =~ s/\A\r\n// or do { $r->{incomplete} = 1; last };
            }
        }
        elsif (defined $h{'content-length'}) {
            $r->{body} = substr($bytes, 0, $h{'content-length'}, '');
            $r->{incomplete} = 1 if length $r->{body} < $h{'content-length'};
        }
        else {
            $r->{body} = $bytes;
            $bytes = '';
        }
    }
    return @out;
}

# http_get($port, $path, %headers) → Future of the parsed response (one request, Connection: close).
sub http_get {
    my ($port, $path, %headers) = @_;
    my $req = "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n"
        . join('', map { "$_: $headers{$_}\r\n" } sort keys %headers) . "\r\n";
    return raw_exchange($port, $req)->then(sub { Future->done((parse_responses($_[0]))[0]) });
}

# wait_for(sub { condition }, timeout) → runs the loop until the condition holds; true if it did.
sub wait_for {
    my ($cond, $timeout) = @_;
    my $loop = loop();
    my $deadline = $loop->time + ($timeout // 5);
    until ($cond->()) {
        return 0 if $loop->time > $deadline;
        $loop->delay_future(after => 0.02)->get;
    }
    return 1;
}

# start_child(sub { ... }) → collector: runs a blocking client in a child
# process while this process's loop keeps serving; $collector->($timeout)
# returns what the child returned (a string), or undef on timeout (the
# child is then killed).
sub start_child {
    my ($code) = @_;
    my $out = File::Temp->new;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $r = eval { $code->() } // "died: $@";
        open my $fh, '>', $out->filename or POSIX::_exit(1);
        print {$fh} $r;
        close $fh;
        POSIX::_exit(0);
    }
    return sub {
        my ($timeout) = @_;
        my $done = wait_for(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, $timeout);
        unless ($done) { kill 'KILL', $pid; waitpid $pid, 0; return undef }
        open my $fh, '<', $out->filename or return undef;
        local $/;
        return scalar <$fh>;
    };
}

# in_child(sub { ... }, $timeout) → start_child, then wait for it.
sub in_child {
    my ($code, $timeout) = @_;
    return start_child($code)->($timeout);
}

1;
