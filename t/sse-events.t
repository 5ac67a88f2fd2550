use strict;
use warnings;
use utf8;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn split_head header_values);
use Future::AsyncAwait;
use Time::HiRes ();

# The sse events on the wire (PAGI-SPEC 3.3; issue 5): the exact bytes of
# the response head and of every event kind, the event-stream text read back
# from the HTTP/1.1 chunked framing.

my $loop = loop();
sub now { Time::HiRes::time() }

# Each subtest installs its own handler; the app records into $call.
my ($handler, @calls);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my $call = { scope => $scope, sends => 0 };
    push @calls, $call;
    my $counting = sub { $call->{sends}++; $send->(@_) };
    return await $handler->($scope, $receive, $counting, $call);
};
my ($server, $port) = start_server(app => $app);

sub sse_req {
    my ($path, @headers) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n" . join('', map { "$_\r\n" } @headers) . "\r\n";
}

# Handler sending a fixed list of events (after reading the sse.request).
sub sends {
    my (@events) = @_;
    return async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        for my $ev (@events) { await $send->($ev) }
    };
}

# Awaits $f, recording ['ok'] or ['fail', message] in @$log.
async sub try_send {
    my ($log, $f) = @_;
    my $ok = eval { await $f; 1 };
    push @$log, $ok ? ['ok'] : [ 'fail', "$@" ];
    return $ok;
}

# Whole exchange until the server closes (bounded): (parsed response, raw bytes).
sub stream {
    my ($req, %o) = @_;
    @calls = ();
    my $raw = raw_exchange($port, $req, timeout => 5, %o)->get;
    my ($r) = parse_responses($raw);
    return ($r, $raw);
}


# Checks that the chunked framing is well formed and terminated.
sub terminated_ok {
    my ($r, $raw, $name) = @_;
    ok $r && $r->{chunked}, "$name: chunked framing";
    ok $r && !$r->{incomplete}, "$name: chunks well formed";
    like $raw, qr/\r\n0\r\n\r\n\z/, "$name: ends with the last chunk, nothing after it";
}

subtest 'sse.start defaults: 200, content-type, cache-control, date, chunked' => sub {
    $handler = sends({ type => 'sse.start' }, { type => 'sse.send', data => 'x' });
    my ($r, $raw) = stream(sse_req('/defaults'));
    like $raw, qr{\AHTTP/1\.1 200 OK\r\n}, 'status line 200 OK';
    is_deeply [ header_values($r, 'content-type') ], ['text/event-stream'], 'one content-type: text/event-stream';
    is_deeply [ header_values($r, 'cache-control') ], ['no-cache'], 'one cache-control: no-cache';
    my @date = header_values($r, 'date');
    is scalar(@date), 1, 'one date header';
    like $date[0] // '', qr/\A(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT\z/, 'date is an IMF-fixdate';
    is_deeply [ header_values($r, 'transfer-encoding') ], ['chunked'], 'transfer-encoding: chunked';
    is_deeply [ header_values($r, 'content-length') ], [], 'no content-length';
    is $r->{body}, "data: x\n\n", 'event-stream text';
    terminated_ok($r, $raw, 'defaults');
};

subtest 'app content-type and cache-control are kept, not duplicated; custom status and headers' => sub {
    $handler = sends(
        { type => 'sse.start', status => 201, headers => [
            [ 'content-type', 'text/event-stream; charset=utf-8' ], [ 'cache-control', 'no-store' ],
            [ 'x-stream', 'yes' ], [ 'set-cookie', 'a=1' ], [ 'set-cookie', 'b=2' ] ] },
        { type => 'sse.send', data => 'y' });
    my ($r, $raw) = stream(sse_req('/custom'));
    like $raw, qr{\AHTTP/1\.1 201 Created\r\n}, 'status 201';
    is_deeply [ header_values($r, 'content-type') ], ['text/event-stream; charset=utf-8'], 'app content-type only';
    is_deeply [ header_values($r, 'cache-control') ], ['no-store'], 'app cache-control only';
    is_deeply [ header_values($r, 'x-stream') ], ['yes'], 'custom header';
    is_deeply [ header_values($r, 'set-cookie') ], [ 'a=1', 'b=2' ], 'repeated header kept in order';
    is $r->{body}, "data: y\n\n", 'body';
    terminated_ok($r, $raw, 'custom');

    # Header names in another case still count as set.
    $handler = sends({ type => 'sse.start', headers => [ [ 'Content-Type', 'text/event-stream;charset=UTF-8' ], [ 'Cache-Control', 'private' ] ] },
        { type => 'sse.send', data => 'z' });
    ($r, $raw) = stream(sse_req('/case'));
    is scalar(header_values($r, 'content-type')), 1, 'Content-Type set by the app: one content-type';
    is scalar(header_values($r, 'cache-control')), 1, 'Cache-Control set by the app: one cache-control';
    is $r->{header}{'cache-control'}, 'private', 'and it is the app value';
};

subtest 'the head is written at sse.start, before any event' => sub {
    my $sent_at;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $loop->delay_future(after => 0.5);
        $sent_at = now();
        await $send->({ type => 'sse.send', event => 'late', data => 'now' });
    };
    @calls = ();
    my $c = open_conn($port);
    my $t0 = now();
    $c->write(sse_req('/early'));
    my $head_buf = eval { $c->read_until(qr/\r\n\r\n/, 3)->get } // '';
    my $head_at = now();
    like $head_buf, qr{\AHTTP/1\.1 200 OK\r\n}, 'head arrived';
    ok !defined $sent_at, 'before the app sent its first event';
    cmp_ok $head_at - $t0, '<', 0.4, sprintf('promptly (%.3fs)', $head_at - $t0);
    my (undef, $rest) = split_head($head_buf);
    is $rest, '', 'nothing but the head so far (no empty chunk either)';
    my $all = eval { $c->read_until(qr/data: now\n\n\r\n/, 3)->get } // '';
    like $all, qr/\r\n\r\n[0-9a-f]+\r\nevent: late\ndata: now\n\n\r\n/, 'then the event, in one chunk';
    ok eval { $c->wait_eof(3)->get; 1 }, 'stream closed after the app returned';
    $c->close;
};

subtest 'sse.send: field order event, data, id, retry; empty fields skipped' => sub {
    $handler = sends(
        { type => 'sse.start' },
        { type => 'sse.send', retry => 1500, id => '7', data => 'hello', event => 'tick' },
        { type => 'sse.send', data => 'only data' },
        { type => 'sse.send', data => 'd', id => 'i' },
        { type => 'sse.send', data => 'd', event => 'e' },
        { type => 'sse.send', data => 'd', retry => 0 },
        { type => 'sse.send', data => 'd', event => '', id => '' },
        { type => 'sse.send', data => 'd', event => undef, id => undef, retry => undef },
        { type => 'sse.send', data => 'sp', event => 'a b', id => ' x ' },
        { type => 'sse.send', data => 42 },
    );
    my ($r, $raw) = stream(sse_req('/fields'));
    is $r->{body}, join('',
        "event: tick\ndata: hello\nid: 7\nretry: 1500\n\n",
        "data: only data\n\n",
        "data: d\nid: i\n\n",
        "event: e\ndata: d\n\n",
        "data: d\nretry: 0\n\n",
        "data: d\n\n",
        "data: d\n\n",
        "event: a b\ndata: sp\nid:  x \n\n",
        "data: 42\n\n",
    ), 'exact event-stream text';
    terminated_ok($r, $raw, 'fields');
    like $raw, qr/\r\n\r\n[0-9a-f]+\r\nevent: tick\ndata: hello\nid: 7\nretry: 1500\n\n\r\n/, 'the first event is one chunk';
};

subtest 'multi-line data: one data line per line, split on \n, \r\n and \r; empty data' => sub {
    $handler = sends(
        { type => 'sse.start' },
        { type => 'sse.send', data => "a\nb\r\nc\rd" },
        { type => 'sse.send', data => "trailing\n" },
        { type => 'sse.send', data => "\n" },
        { type => 'sse.send', data => "x\r\n\r\ny" },
        { type => 'sse.send', data => "cr\r\rlf" },
        { type => 'sse.send', data => '' },
        { type => 'sse.send', data => '', event => 'ping' },
    );
    my ($r, $raw) = stream(sse_req('/lines'));
    is $r->{body}, join('',
        "data: a\ndata: b\ndata: c\ndata: d\n\n",
        "data: trailing\ndata: \n\n",
        "data: \ndata: \n\n",
        "data: x\ndata: \ndata: y\n\n",
        "data: cr\ndata: \ndata: lf\n\n",
        "data: \n\n",
        "event: ping\ndata: \n\n",
    ), 'exact event-stream text';
    terminated_ok($r, $raw, 'lines');
};

subtest 'wide characters are UTF-8 encoded; the server survives' => sub {
    $handler = sends(
        { type => 'sse.start' },
        { type => 'sse.send', event => "évènement☺", data => "héllo ☺\nzweite Zeile ü", id => "ïd-☺" },
        { type => 'sse.send', data => "caf\x{e9}" },                # a character string without the UTF-8 flag
        { type => 'sse.send', data => "\x{1F600} astral" },
        { type => 'sse.comment', comment => "kommentar ☺" },
    );
    my ($r, $raw) = stream(sse_req('/utf8'));
    my $expected = "event: évènement☺\ndata: héllo ☺\ndata: zweite Zeile ü\nid: ïd-☺\n\n"
        . "data: café\n\n" . "data: \x{1F600} astral\n\n" . ":kommentar ☺\n\n";
    utf8::encode($expected);
    ok !utf8::is_utf8($r->{body}), 'wire bytes are bytes';
    is $r->{body}, $expected, 'exact UTF-8 bytes';
    terminated_ok($r, $raw, 'utf8');

    # Still serving.
    $handler = sends({ type => 'sse.start' }, { type => 'sse.send', data => 'still here' });
    ($r) = stream(sse_req('/after-utf8'));
    is $r->{body}, "data: still here\n\n", 'the server still answers';
};

subtest 'invalid sse.send fails the $send and writes nothing' => sub {
    my @log;
    my @bad = (
        [ 'newline in event', { data => 'x', event => "a\nb" },  qr/\bevent\b/ ],
        [ 'CR in event',      { data => 'x', event => "a\rb" },  qr/\bevent\b/ ],
        [ 'newline in id',    { data => 'x', id => "1\n2" },     qr/\bid\b/ ],
        [ 'CRLF in id',       { data => 'x', id => "1\r\n" },    qr/\bid\b/ ],
        [ 'negative retry',   { data => 'x', retry => -1 },      qr/\bretry\b/ ],
        [ 'fractional retry', { data => 'x', retry => 1.5 },     qr/\bretry\b/ ],
        [ 'text retry',       { data => 'x', retry => 'soon' },  qr/\bretry\b/ ],
        [ 'missing data',     { event => 'e' },                  qr/\bdata\b/ ],
        [ 'undef data',       { data => undef },                 qr/\bdata\b/ ],
    );
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await try_send(\@log, $send->({ type => 'sse.send', data => 'before' }));
        for my $b (@bad) {
            await try_send(\@log, $send->({ type => 'sse.send', %{ $b->[1] } }));
        }
        await try_send(\@log, $send->({ type => 'sse.send', data => 'after' }));
    };
    my ($r, $raw) = stream(sse_req('/invalid'));
    is $log[0][0], 'ok', 'a valid send before';
    for my $i (0 .. $#bad) {
        my ($name, undef, $re) = @{ $bad[$i] };
        my $entry = $log[ $i + 1 ] // [];
        is $entry->[0], 'fail', "$name: the \$send Future failed";
        like $entry->[1] // '', qr/sse\.send/, "$name: message names the event";
        like $entry->[1] // '', $re, "$name: message names the field";
    }
    is $log[-1][0], 'ok', 'a valid send after';
    is $r->{body}, "data: before\n\ndata: after\n\n", 'nothing of the failed events reached the wire';
    terminated_ok($r, $raw, 'invalid');
    diag("e.g.: $log[1][1]") if $log[1];
};

subtest 'sse.comment: lines prefixed with ":" unless already prefixed' => sub {
    my @log;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.comment', comment => 'hello' });
        await $send->({ type => 'sse.comment', comment => ':already' });
        await $send->({ type => 'sse.comment', comment => "two\nlines" });
        await $send->({ type => 'sse.comment', comment => "mixed\r\n:pre\rlast" });
        await $send->({ type => 'sse.comment', comment => '' });
        await $send->({ type => 'sse.comment', comment => ' spaced' });
        await try_send(\@log, $send->({ type => 'sse.comment' }));
    };
    my ($r, $raw) = stream(sse_req('/comments'));
    is $r->{body}, ":hello\n\n:already\n\n:two\n:lines\n\n:mixed\n:pre\n:last\n\n:\n\n: spaced\n\n", 'exact comment text';
    is $log[0][0], 'fail', 'a comment without comment fails';
    like $log[0][1] // '', qr/comment/, 'naming the field';
    terminated_ok($r, $raw, 'comments');
};

subtest 'sse.keepalive: comments from the engine while the app sleeps; interval 0 stops them' => sub {
    my (%t, @log);
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => 'begin' });
        await $send->({ type => 'sse.keepalive', interval => 0.3, comment => 'ping' });
        $t{keepalive_sent} = now();
        $t{sends_before} = $call->{sends};
        await $loop->delay_future(after => 1.3);
        $t{woke} = now();
        $t{sends_after} = $call->{sends};
        await try_send(\@log, $send->({ type => 'sse.keepalive', interval => 0 }));
        $t{stopped} = now();
        await $loop->delay_future(after => 1);
        await $send->({ type => 'sse.send', data => 'end' });
    };

    # Count every way Perl could take part while the app sleeps.
    my %perl;
    no warnings 'redefine';
    my %orig;
    # sse.send goes through the XS fast path (the $send that
    # PAGI::Server::SSE::_bound_send makes, once per stream), which queues
    # without calling the engine's Perl-visible sse_send; the app's own sends
    # are counted by the app.
    for my $name (qw(PAGI::Server::_on_wake PAGI::Server::Native::http_body PAGI::Server::Native::sse_comment
                     PAGI::Server::Native::sse_send PAGI::Server::SSE::_bound_send PAGI::Server::Native::flush)) {
        no strict 'refs';
        my $o = $orig{$name} = \&{$name};
        *{$name} = sub {
            push @{ $perl{$name} }, now();
            goto &$o;
        };
    }
    my $restore = sub { no strict 'refs'; *{$_} = $orig{$_} for keys %orig };

    @calls = ();
    my $c = open_conn($port);
    $c->write(sse_req('/keepalive'));
    my @pings;    # arrival time of each ':ping' comment
    my $seen = 0;
    my $ok = eval {
        $c->read_until(sub {
            my ($buf, $eof) = @_;
            my $n = () = $buf =~ /:ping\n\n/g;
            while ($seen < $n) { push @pings, now(); $seen++ }
            return $eof || $buf =~ /data: end\n\n\r\n0\r\n\r\n\z/;
        }, 6)->get;
        1;
    };
    $restore->();
    ok $ok, 'stream ran to the end' or diag($@);
    my ($r) = parse_responses($c->buffer);
    $c->close;

    ok $t{keepalive_sent} && $t{woke}, 'app slept after sse.keepalive' or return;
    my @during = grep { $_ > $t{keepalive_sent} && $_ <= $t{woke} } @pings;
    my $in_first = grep { $_ <= $t{keepalive_sent} + 1.2 } @during;
    cmp_ok $in_first, '>=', 3, sprintf('at least 3 ping comments in the first 1.2 s (%d)', $in_first);
    cmp_ok scalar(@during), '<=', 5, 'and not many more than one per 0.3 s';
    my @gaps = map { $during[$_] - $during[ $_ - 1 ] } 1 .. $#during;
    my @bad_gaps = grep { $_ < 0.2 || $_ > 0.5 } @gaps;
    is scalar(@bad_gaps), 0, 'about 0.3 s apart (' . join(', ', map { sprintf '%.3f', $_ } @gaps) . ')';
    ok @during && $during[0] - $t{keepalive_sent} < 0.5, 'the first about 0.3 s after the keepalive event';
    is $t{sends_after}, $t{sends_before}, 'the app sent nothing while it slept';
    for my $name (sort keys %orig) {
        my @hits = grep { $_ > $t{keepalive_sent} + 0.05 && $_ < $t{woke} - 0.05 } @{ $perl{$name} // [] };
        is scalar(@hits), 0, "no $name call while the app slept: the engine wrote the comments";
    }
    for my $name ('PAGI::Server::_on_wake', 'PAGI::Server::SSE::_bound_send') {
        cmp_ok scalar(@{ $perl{$name} // [] }), '>', 0, "(the $name counter works: it saw calls outside that window)";
    }
    is $log[0][0], 'ok', 'sse.keepalive interval 0 accepted';
    my @after_stop = grep { $_ > $t{stopped} + 0.1 } @pings;
    is scalar(@after_stop), 0, 'no comment after interval 0';
    is $r && $r->{body} =~ s/(?::ping\n\n)+/<pings>/r, "data: begin\n\n<pings>data: end\n\n", 'only pings between the events, exact bytes';

    # Default comment: an empty comment line.
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.keepalive', interval => 0.1 });
        await $loop->delay_future(after => 0.35);
        await $send->({ type => 'sse.keepalive', interval => 0.1, comment => ':colon' });
        await $loop->delay_future(after => 0.35);
    };
    ($r) = stream(sse_req('/keepalive-default'));
    like $r->{body}, qr/\A(?::\n\n){2,}(?::colon\n\n){2,}\z/, 'default keepalive is ":\n\n"; a prefixed comment is not doubled; last event wins';

    # Invalid keepalives fail.
    @log = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await try_send(\@log, $send->({ type => 'sse.keepalive', interval => -1 }));
        await try_send(\@log, $send->({ type => 'sse.keepalive' }));
        await try_send(\@log, $send->({ type => 'sse.keepalive', interval => 'often' }));
    };
    stream(sse_req('/keepalive-bad'));
    is_deeply [ map { $_->[0] } @log ], [qw(fail fail fail)], 'negative, missing or non-numeric interval fails';
    like $log[0][1] // '', qr/interval/, 'naming interval';
};

subtest 'sse.close ends the stream at once; second close is a no-op; other sends fail' => sub {
    my (%t, @log);
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => 'last' });
        await $send->({ type => 'sse.close', reason => 'done here' });
        $t{closed} = now();
        my $again = $send->({ type => 'sse.close' });
        $t{second_close_done} = $again->is_ready && $again->is_done ? 1 : 0;
        await try_send(\@log, $send->({ type => 'sse.send', data => 'too late' }));
        await try_send(\@log, $send->({ type => 'sse.comment', comment => 'too late' }));
        await try_send(\@log, $send->({ type => 'sse.keepalive', interval => 1 }));
        await try_send(\@log, $send->({ type => 'sse.start' }));
        await $loop->delay_future(after => 0.6);
        $t{returned} = now();
    };
    @calls = ();
    my $c = open_conn($port);
    $c->write(sse_req('/close'));
    my $buf = eval { $c->wait_eof(3)->get } // '';
    my $eof_at = now();
    $c->close;
    my ($r) = parse_responses($buf);
    is $r->{body}, "data: last\n\n", 'the events before sse.close';
    terminated_ok($r, $buf, 'sse.close');
    ok !defined $t{returned}, 'EOF arrived before the app returned: sse.close ended the stream at once';
    cmp_ok $eof_at - ($t{closed} // 0), '<', 0.3, 'promptly';
    is $t{second_close_done}, 1, 'a second sse.close returns a done Future';
    is scalar(@log), 4, 'four sends after sse.close';
    for my $i (0 .. $#log) {
        my $type = (qw(sse.send sse.comment sse.keepalive sse.start))[$i];
        is $log[$i][0], 'fail', "$type after sse.close fails";
        like $log[$i][1] // '', qr/cannot send '\Q$type\E' after sse\.close/, "$type: message";
    }
    ok wait_for(sub { $t{returned} }, 3), 'the app returned normally';
};

subtest 'returning from the app ends the stream the same way' => sub {
    $handler = sends({ type => 'sse.start' }, { type => 'sse.send', data => 'bye' });
    my ($r, $raw) = stream(sse_req('/return'));
    is $r->{body}, "data: bye\n\n", 'body';
    terminated_ok($r, $raw, 'return');

    # Returning without sse.start: the backstop of PAGI-SPEC 1.3 / 1.4, a 500.
    $handler = async sub { my ($scope, $receive) = @_; await $receive->(); return };
    ($r, $raw) = stream(sse_req('/nothing'));
    is $r && $r->{status}, 500, 'returning without sending anything gets the 500 backstop';
    isnt $r && $r->{header}{'content-type'}, 'text/event-stream', 'not a stream';
};

subtest 'decline: sse.http.response.start 204 gives a plain response and closes' => sub {
    my @log;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await try_send(\@log, $send->({ type => 'sse.http.response.start', status => 204, headers => [ [ 'x-why', 'no more' ] ] }));
        await try_send(\@log, $send->({ type => 'sse.http.response.body', body => '' }));
        await try_send(\@log, $send->({ type => 'sse.send', data => 'nope' }));
    };
    my ($r, $raw) = stream(sse_req('/decline204'));
    like $raw, qr{\AHTTP/1\.1 204 No Content\r\n}, '204 status line';
    is $r->{header}{'x-why'}, 'no more', 'app header';
    is_deeply [ header_values($r, 'content-type') ], [], 'no event-stream content-type';
    is_deeply [ header_values($r, 'transfer-encoding') ], [], 'no chunked framing';
    is_deeply [ header_values($r, 'cache-control') ], [], 'no sse cache-control';
    my (undef, $rest) = split_head($raw);
    is $rest, '', 'nothing after the head; the server closed';
    is $log[0][0], 'ok', 'sse.http.response.start accepted';
    is $log[1][0], 'ok', 'sse.http.response.body accepted';
    # PAGI-SPEC 3.3.2: stream events after sse.http.response.start MUST raise.
    is $log[2][0], 'fail', 'sse.send after the completed decline fails';
};

subtest 'decline: 401 with a body in two parts' => sub {
    my @log;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await try_send(\@log, $send->({ type => 'sse.http.response.start', status => 401,
            headers => [ [ 'content-type', 'text/plain' ], [ 'www-authenticate', 'Bearer' ] ] }));
        await try_send(\@log, $send->({ type => 'sse.send', data => 'in between' }));
        await try_send(\@log, $send->({ type => 'sse.start' }));
        await try_send(\@log, $send->({ type => 'sse.http.response.body', body => 'unauth', more => 1 }));
        await try_send(\@log, $send->({ type => 'sse.http.response.body', body => "orized\n", more => 0 }));
        await try_send(\@log, $send->({ type => 'sse.send', data => 'after' }));
        await try_send(\@log, $send->({ type => 'sse.comment', comment => 'after' }));
    };
    my ($r, $raw) = stream(sse_req('/decline401'));
    like $raw, qr{\AHTTP/1\.1 401 Unauthorized\r\n}, '401 status line';
    is $r->{header}{'www-authenticate'}, 'Bearer', 'app header';
    is_deeply [ header_values($r, 'content-type') ], ['text/plain'], 'the app content-type only';
    is_deeply [ header_values($r, 'cache-control') ], [], 'no sse cache-control';
    is $r->{body}, "unauthorized\n", 'both body parts';
    is_deeply [ header_values($r, 'content-length') ], ['13'], 'sent with a Content-Length';
    is_deeply [ header_values($r, 'transfer-encoding') ], [], 'not chunked';
    ok !$r->{incomplete}, 'body complete by its framing';
    unlike $raw, qr/in between|after|event-stream/, 'no stream bytes';
    my @names = ('decline start', 'sse.send between start and body', 'sse.start between start and body',
                 'decline body part 1', 'decline body part 2', 'sse.send after the decline body', 'sse.comment after the decline body');
    my @want = qw(ok fail fail ok ok fail fail);
    is $log[$_][0], $want[$_], "$names[$_]: $want[$_]" for 0 .. $#want;
    like $log[1][1] // '', qr/sse\.send/, 'message names sse.send';
    like $log[2][1] // '', qr/sse\.start/, 'message names sse.start';
};

subtest 'decline after sse.start fails; the stream goes on' => sub {
    my @log;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await try_send(\@log, $send->({ type => 'sse.http.response.start', status => 404 }));
        await try_send(\@log, $send->({ type => 'sse.http.response.body', body => 'not found' }));
        await $send->({ type => 'sse.send', data => 'streaming' });
    };
    my ($r, $raw) = stream(sse_req('/late-decline'));
    is $r->{status}, 200, 'stream status';
    is $r->{body}, "data: streaming\n\n", 'stream body only';
    terminated_ok($r, $raw, 'late decline');
    is_deeply [ map { $_->[0] } @log ], [qw(fail fail)], 'decline start and body fail after sse.start';
    like $log[0][1] // '', qr/sse\.http\.response\.start/, 'message names the event';
};

subtest 'unknown event types fail' => sub {
    my @log;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await try_send(\@log, $send->({ type => 'http.response.start', status => 200 }));
        await $send->({ type => 'sse.start' });
        await try_send(\@log, $send->({ type => 'websocket.send', text => 'x' }));
    };
    my ($r) = stream(sse_req('/unknown'));
    is_deeply [ map { $_->[0] } @log ], [qw(fail fail)], 'http.response.start and websocket.send fail in an sse scope';
    like $log[0][1] // '', qr/Unrecognized event type 'http\.response\.start' for sse protocol/, 'message';
    is $r->{body}, '', 'empty stream';
};

subtest 'app dies before sse.start: 500; after: connection cut' => sub {
    $handler = async sub { my ($scope, $receive) = @_; await $receive->(); die "boom before\n" };
    my ($r, $raw) = stream(sse_req('/die-early'));
    is $r->{status}, 500, 'status 500';
    isnt $r->{header}{'content-type'}, 'text/event-stream', 'not an event stream';
    ok !$r->{incomplete}, 'complete 500 response, then the server closed';

    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => 'partial' });
        await $loop->delay_future(after => 0.1);
        die "boom after\n";
    };
    ($r, $raw) = stream(sse_req('/die-late'));
    is $r->{status}, 200, 'the stream had started';
    is $r->{body}, "data: partial\n\n", 'events before the error arrived';
    unlike $raw, qr/\r\n0\r\n\r\n\z/, 'no last chunk: the stream was cut, not ended';

    $handler = sends({ type => 'sse.start' }, { type => 'sse.send', data => 'ok' });
    ($r) = stream(sse_req('/after-die'));
    is $r->{body}, "data: ok\n\n", 'server still serving';
};

subtest 'HTTP/1.0 client: close-delimited stream' => sub {
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        $call->{version} = $scope->{http_version};
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => "one\ntwo", id => '1' });
        await $send->({ type => 'sse.comment', comment => 'c' });
        await $loop->delay_future(after => 0.1);
        await $send->({ type => 'sse.send', event => 'x', data => 'three' });
    };
    my ($r, $raw) = stream("GET /old HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n");
    is $calls[-1]{version}, '1.0', 'scope http_version 1.0';
    like $raw, qr{\AHTTP/1\.[01] 200 }, 'status 200';
    is_deeply [ header_values($r, 'transfer-encoding') ], [], 'not chunked';
    is_deeply [ header_values($r, 'content-length') ], [], 'no content-length';
    is_deeply [ header_values($r, 'content-type') ], ['text/event-stream'], 'content-type';
    my (undef, $rest) = split_head($raw);
    is $rest, "data: one\ndata: two\nid: 1\n\n:c\n\nevent: x\ndata: three\n\n", 'raw event-stream bytes, ended by EOF';
};

stop_server($server);
done_testing;
