# PAGI::App::WrapPSGI responses over real sockets: the streaming writer
# (chunk arrival times), a responder called later from a timer, bodies that
# are IO::Handle-like objects (with backpressure), poll_cb, 500s for
# exceptions and bad shapes, the SSE decline path, websocket refusal.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use IO::Async::Stream;
use IO::Socket::IP;
use Time::HiRes qw(time);
use PAGI::App::WrapPSGI;

my $loop = loop();
my %route;    # path => PSGI app
my @log;      # warn lines (psgi.errors and the server's log)
local $SIG{__WARN__} = sub { push @log, $_[0] };
my $app = PAGI::App::WrapPSGI->new(psgi_app => sub {
    my ($env) = @_;
    my $handler = $route{ $env->{PATH_INFO} } or return [ 404, [], ['no route'] ];
    return $handler->($env);
})->to_app;
my ($server, $port) = start_server(app => $app);

# Sends $request; collects [arrival time, bytes] per read until EOF.
sub timed_exchange {
    my ($request, %o) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die "connect: $@";
    my (@reads, $all);
    my $done = $loop->new_future;
    my $stream = IO::Async::Stream->new(
        handle  => $sock,
        on_read => sub { my ($s, $in, $eof) = @_; push @reads, [ time, $$in ]; $all .= $$in; $$in = ''; 0 },
        on_read_eof => sub { $done->done unless $done->is_ready },
        on_read_error => sub { $done->done unless $done->is_ready },
    );
    $loop->add($stream);
    $stream->write($request);
    my $ok = Future->wait_any($done, $loop->delay_future(after => $o{timeout} // 20)->then(sub { Future->fail('timeout') }))->block_until_ready;
    $loop->remove($stream) if $stream->loop;
    $stream->close_now;
    return (\@reads, $all // '');
}

sub get { my ($path, %h) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n" . join('', map {"$_: $h{$_}\r\n"} sort keys %h) . "Connection: close\r\n\r\n" }

subtest 'streaming writer: the first chunk arrives before the second is written' => sub {
    my $second_written;
    $route{'/stream'} = sub {
        return sub {
            my ($responder) = @_;
            my $writer = $responder->([ 200, [ 'Content-Type' => 'text/plain' ] ]);
            $writer->write("first\n");
            $loop->delay_future(after => 0.5)->on_done(sub {
                $second_written = time;
                $writer->write("second\n");
                $writer->close;
            })->retain;
        };
    };
    my ($reads, $raw) = timed_exchange(get('/stream'));
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, 'status 200';
    is $r->{body}, "first\nsecond\n", 'both chunks';
    ok $r->{chunked} && !$r->{incomplete}, 'chunked and complete';
    my ($first) = grep { $_->[1] =~ /first/ } @$reads;
    ok $first && $second_written && $first->[0] < $second_written, 'first chunk seen before the second write'
        or diag explain [ map { [ $_->[0], $_->[1] ] } @$reads ], $second_written;
};

subtest 'delayed responder called later from a timer' => sub {
    $route{'/later'} = sub {
        my ($env) = @_;
        return sub {
            my ($responder) = @_;
            $loop->delay_future(after => 0.3)->on_done(sub {
                $responder->([ 200, [ 'Content-Type' => 'text/plain' ], [ "late ", $env->{QUERY_STRING} ] ]);
            })->retain;
        };
    };
    my (undef, $raw) = timed_exchange(get('/later?q=1'));
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, '200 after the timer';
    is $r->{body}, 'late q=1', 'body from the later call';
};

subtest 'IO::Handle-like body: getline/close, read as the client takes it' => sub {
    our ($made, $closed) = (0, 0);
    my $total = 48 * 1024 * 1024;
    {
        package Counting;
        sub new { bless { left => $_[1] }, $_[0] }
        sub getline { my $s = shift; return undef unless $s->{left} > 0;
            $s->{left} -= 65536; $main::made += 65536; return 'x' x 65536 }
        sub close { $main::closed++ }
    }
    $route{'/big'} = sub { [ 200, [ 'Content-Type' => 'application/octet-stream' ], Counting->new($total) ] };
    # A client that does not read yet: only the socket buffers fill.
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die "connect: $@";
    syswrite $sock, get('/big');
    wait_for(sub { $made > 0 }, 10);
    $loop->delay_future(after => 1)->get;
    cmp_ok $made, '<', $total / 2, "the server stops reading the body while the client stalls (made $made of $total)";
    my $got = 0;
    my $done = $loop->new_future;
    my $stream = IO::Async::Stream->new(handle => $sock,
        on_read => sub { my ($s, $in) = @_; $got += length $$in; $$in = ''; 0 },
        on_read_eof => sub { $done->done });
    $loop->add($stream);
    Future->wait_any($done, $loop->delay_future(after => 30))->get;
    $loop->remove($stream) if $stream->loop;
    cmp_ok $got, '>', $total, 'then the whole body arrives';
    is $made, $total, 'every chunk was produced';
    is $closed, 1, 'close was called once';
};

subtest 'poll_cb pulls with backpressure' => sub {
    my $polls = 0;
    $route{'/poll'} = sub {
        return sub {
            my $writer = shift->([ 200, [] ]);
            my $n = 0;
            $writer->poll_cb(sub {
                my ($w) = @_;
                $polls++;
                if ($n++ < 200) { $w->write('y' x 65536) } else { $w->close }
            });
        };
    };
    my (undef, $raw) = timed_exchange(get('/poll'));
    my ($r) = parse_responses($raw);
    is length($r->{body}), 200 * 65536, 'all polled chunks arrive';
    is $polls, 201, 'called once per chunk, then for the close';
};

subtest 'exceptions and wrong shapes are 500s naming the problem' => sub {
    my %bad = (
        '/die'       => sub { die "boom in app\n" },
        '/hash'      => sub { return { status => 200 } },
        '/short'     => sub { return [ 200, [] ] },
        '/odd'       => sub { return [ 200, ['X-A'], [] ] },
        '/body'      => sub { return [ 200, [], 'a string' ] },
        '/status'    => sub { return [ 'OK', [], [] ] },
        '/wide'      => sub { return [ 200, [], [ "caf\x{e9} \x{263a}" ] ] },
        '/crlf'      => sub { return [ 200, [ 'X-Bad' => "a\r\nInjected: 1" ], ['x'] ] },
        '/late-die'  => sub { return sub { die "boom in delayed\n" } },
        '/late-bad'  => sub { return sub { $_[0]->('nope') } },
    );
    my %want = (
        '/die'      => qr/PSGI application error: boom in app/,
        '/hash'     => qr/PSGI response must be an array reference or a code reference, got a hash reference/,
        '/short'    => qr/PSGI response must have 3 elements/,
        '/odd'      => qr/even-sized list/,
        '/body'     => qr/body must be an array reference or a filehandle/,
        '/status'   => qr/status must be an integer/,
        '/wide'     => qr/wide characters/,
        '/crlf'     => qr/rejected by the server: .*header/i,
        '/late-die' => qr/PSGI application error: boom in delayed/,
        '/late-bad' => qr/PSGI response must be an array reference, got 'nope'/,
    );
    %route = (%route, %bad);
    for my $path (sort keys %bad) {
        @log = ();
        my (undef, $raw) = timed_exchange(get($path));
        my ($r) = parse_responses($raw);
        is $r->{status}, 500, "$path: 500";
        like join('', @log), $want{$path}, "$path: the log names the problem";
        unlike $raw, qr/Injected/, "$path: nothing injected" if $path eq '/crlf';
    }
    # The server keeps serving.
    my (undef, $raw) = timed_exchange(get('/later?q=2'));
    is +(parse_responses($raw))[0]{body}, 'late q=2', 'served after the errors';
};

subtest 'psgi.errors goes to the log' => sub {
    @log = ();
    $route{'/errors'} = sub { my $e = $_[0]{'psgi.errors'}; $e->print("via method"); print {$e} "via print\n"; [ 200, [], ['ok'] ] };
    timed_exchange(get('/errors'));
    is_deeply [ grep { /via/ } @log ], [ "via method\n", "via print\n" ], 'each write is one warn line';
};

subtest 'sse scope: the PSGI app answers through the decline path, streaming its own events' => sub {
    my $second_written;
    $route{'/events'} = sub {
        my ($env) = @_;
        return sub {
            my $writer = shift->([ 200, [ 'Content-Type' => 'text/event-stream', 'Cache-Control' => 'no-cache' ] ]);
            $writer->write("data: one\n\n");
            $loop->delay_future(after => 0.5)->on_done(sub {
                $second_written = time;
                $writer->write("event: tick\ndata: two\n\n");
                $writer->close;
            })->retain;
        };
    };
    $route{'/json'} = sub { [ 200, [ 'Content-Type' => 'application/json' ], ['{"ok":1}'] ] };
    my ($reads, $raw) = timed_exchange(get('/events', Accept => 'text/event-stream'));
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, 'status 200';
    is $r->{header}{'content-type'}, 'text/event-stream', 'the app content type';
    is $r->{body}, "data: one\n\nevent: tick\ndata: two\n\n", 'the app bytes, unchanged';
    my ($first) = grep { $_->[1] =~ /data: one/ } @$reads;
    ok $first && $second_written && $first->[0] < $second_written, 'first event seen before the second write';
    (undef, $raw) = timed_exchange(get('/json', Accept => 'text/event-stream, application/json'));
    ($r) = parse_responses($raw);
    is $r->{body}, '{"ok":1}', 'an ordinary response to an sse scope';
    is $r->{header}{'content-length'}, 8, 'with a Content-Length';
};

subtest 'websocket scopes are refused with 403' => sub {
    my (undef, $raw) = timed_exchange("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    like $raw, qr{\AHTTP/1\.1 403 }, 'status 403';
};

stop_server($server);
done_testing;
