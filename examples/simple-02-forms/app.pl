# PAGI::Simple forms: HTML forms, a file upload, a signed-cookie session and
# flash messages (a one-shot session value shown on the next page, then gone).
# Run: perl -Mblib bin/pagi-server examples/simple-02-forms/app.pl --port 5000
# Open http://127.0.0.1:5000/ in a browser, or with curl (the cookie jar keeps the session):
#   curl -c jar -b jar -d name=Ada http://127.0.0.1:5000/login       → 303 to /, flash "Welcome, Ada!"
#   curl -c jar -b jar http://127.0.0.1:5000/                        → the page, with the flash (once)
#   curl -c jar -b jar -F file=@notes.txt -F note='my notes' http://127.0.0.1:5000/upload
#                                                                     → 303 to /, flash "Uploaded notes.txt (N bytes)."
#   curl -b jar http://127.0.0.1:5000/files/1                        → the uploaded bytes, as an attachment
#   curl -c jar -b jar -X POST http://127.0.0.1:5000/logout          → 303 to /, flash "Signed out."
# Bad input (an empty name, no file, a note over 200 characters) is reported
# by a flash too; an upload over 256 KiB is refused with 413.
# Set PAGI_SIMPLE_SECRET (16+ characters) to keep sessions across restarts;
# without it a random secret is made at startup. Session cookies are
# SameSite=Lax, so another site cannot post these forms with them.
use PAGI::Simple;
use Digest::SHA ();

my $secret = $ENV{PAGI_SIMPLE_SECRET} // unpack 'H*', join '', map { chr int rand 256 } 1 .. 32;
my $app = PAGI::Simple->new(name => 'Forms', max_upload_size => 256 * 1024, secrets => [$secret]);

# Uploaded files, in memory: id → { owner, filename, size, sha256, note, bytes }.
my %files;
my $next_file = 1;

sub esc ($s) { ($s // '') =~ s/([&<>"'])/'&#' . ord($1) . ';'/ger }

# A flash is kept in the session until the next page shows it.
sub flash ($c, $kind, $text) { $c->session->{flash} = { kind => $kind, text => $text } }
sub take_flash ($c) { delete $c->session->{flash} }

sub back_home ($c) { $c->redirect('/', 303) }

$app->get('/' => sub ($c) {
    my $flash = take_flash($c);
    my $user = $c->session->{user};
    my $html = "<!doctype html>\n<meta charset=\"utf-8\">\n<title>PAGI::Simple forms</title>\n<h1>Forms</h1>\n";
    $html .= sprintf qq{<p class="flash %s">%s</p>\n}, esc($flash->{kind}), esc($flash->{text}) if $flash;
    if (!defined $user) {
        $html .= qq{<form method="post" action="/login">\n<label>Name <input name="name" maxlength="40"></label>\n}
            . qq{<button>Sign in</button>\n</form>\n};
    }
    else {
        $html .= sprintf(qq{<p>Signed in as <b class="user">%s</b>.</p>\n}, esc($user))
            . qq{<form method="post" action="/logout"><button>Sign out</button></form>\n}
            . qq{<form method="post" action="/upload" enctype="multipart/form-data">\n}
            . qq{<label>File <input type="file" name="file"></label>\n}
            . qq{<label>Note <input name="note" maxlength="200"></label>\n<button>Upload</button>\n</form>\n};
        my @mine = grep { $files{$_}{owner} eq $user } sort { $a <=> $b } keys %files;
        $html .= "<ul class=\"files\">\n" . join('', map {
            my $f = $files{$_};
            sprintf qq{<li><a href="/files/%d">%s</a> (%d bytes, sha256 %s)%s</li>\n}, $_, esc($f->{filename}),
                $f->{size}, $f->{sha256}, length $f->{note} ? ': ' . esc($f->{note}) : '';
        } @mine) . "</ul>\n" if @mine;
    }
    $c->html($html);
});

$app->post('/login' => sub ($c) {
    my $name = $c->param('name') // '';
    $name =~ s/^\s+|\s+$//g;
    if ($name eq '' || length $name > 40 || $name =~ /[[:cntrl:]]/) {
        flash($c, error => 'name: give 1 to 40 printable characters.');
        return back_home($c);
    }
    $c->session->{user} = $name;
    flash($c, info => "Welcome, $name!");
    back_home($c);
});

$app->post('/logout' => sub ($c) {
    delete $c->session->{user};
    flash($c, info => 'Signed out.');
    back_home($c);
});

$app->post('/upload' => sub ($c) {
    my $user = $c->session->{user};
    unless (defined $user) {
        flash($c, error => 'Sign in before uploading.');
        return back_home($c);
    }
    my $upload = $c->upload('file');
    my $note = $c->param('note') // '';
    if (!$upload || !length($upload->filename // '')) {
        flash($c, error => 'file: choose a file to upload.');
        return back_home($c);
    }
    if (length $note > 200) {
        flash($c, error => 'note: at most 200 characters.');
        return back_home($c);
    }
    my $bytes = $upload->slurp;
    # Only the last path component of the client's name is kept, and only for display.
    my $filename = $upload->filename =~ s{.*[/\\]}{}sr;
    my $id = $next_file++;
    $files{$id} = { owner => $user, filename => $filename, size => length $bytes,
        sha256 => Digest::SHA::sha256_hex($bytes), note => $note, bytes => $bytes };
    flash($c, info => sprintf 'Uploaded %s (%d bytes).', $filename, length $bytes);
    back_home($c);
});

$app->get('/files/:id<\d+>' => sub ($c) {
    my $file = $files{ $c->path_params->{id} };
    # Someone else's file is as absent as a missing one.
    $c->error(404) unless $file && defined $c->session->{user} && $file->{owner} eq $c->session->{user};
    # Served as an attachment of opaque bytes: an uploaded page must not run in this origin.
    (my $ascii = $file->{filename}) =~ s/[^\w.\- ]/_/g;
    $c->header('content-disposition' => qq{attachment; filename="$ascii"})
        ->header('x-content-type-options' => 'nosniff')
        ->content_type('application/octet-stream')
        ->send_response($file->{bytes});
});

$app->to_app;
