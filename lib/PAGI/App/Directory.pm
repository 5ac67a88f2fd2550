package PAGI::App::Directory;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::App::File';

use Cwd ();
use PAGI::Middleware;

=head1 NAME

PAGI::App::Directory - a PAGI app listing directories and serving their files

=head1 SYNOPSIS

    use PAGI::App::Directory;
    my $app = PAGI::App::Directory->new(root => '.')->to_app;

=head1 DESCRIPTION

A L<PAGI::App::File> that answers a request for a directory with an HTML
listing instead of C<404>. Files are served exactly as L<PAGI::App::File>
serves them, with the same path safety; C<new> takes the same options
(C<root> is required).

The listing names every entry of the directory, directories first (with a
trailing C</>), each group sorted by name (byte order), with size and
modification time; names are HTML-escaped in the text and percent-encoded
in the links, so any file name is safe to show. A link to the parent
directory comes first, except at the root. Entries that are symbolic links
leading outside the root are left out (they could not be served anyway).

A directory requested without its trailing slash is redirected
(C<301>) to the path with one, so relative links in the listing work.

=cut

sub new {
    my ($class, %o) = @_;
    PAGI::App::File::_option_error($class, file => 'is not taken by PAGI::App::Directory (use root)') if exists $o{file};
    return $class->SUPER::new(%o);
}

=head2 directory_answer

The listing (or the redirect) for a directory; see L</DESCRIPTION>.

=cut

sub directory_answer {
    my ($self, $scope, $dir) = @_;
    my $path = $scope->{path} // '/';
    if ($path !~ m{/\z}) {
        my $location = (defined $scope->{raw_path} ? $scope->{raw_path} : _escape_path($path)) . '/';
        $location .= "?$scope->{query_string}" if length($scope->{query_string} // '');
        return { status => 301, headers => [ [ location => $location ], [ 'content-type' => 'text/plain; charset=utf-8' ],
                                             [ 'content-length' => 0 ] ], body => '' };
    }
    opendir my $dh, $dir or return PAGI::App::File::_plain(403, "Forbidden\n");
    my (@dirs, @files);
    for my $name (readdir $dh) {
        next if $name eq '.' || $name eq '..';
        my $full = "$dir/$name";
        my @stat = stat $full or next;    # a dangling link
        my $is_dir = -d _ ? 1 : 0;
        if (-l $full) {
            my $real = Cwd::realpath($full);
            next unless defined $real && $self->inside_root($real);
        }
        push @{ $is_dir ? \@dirs : \@files }, [ $name, $stat[7], $stat[9], $is_dir ];
    }
    closedir $dh;

    my $shown = _display($path);
    my $title = 'Index of ' . PAGI::Middleware->html_escape($shown);
    my $html = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>$title</title>\n"
        . "<style>body{font-family:sans-serif}td{padding:0 1em 0 0}td.size{text-align:right}</style></head>\n"
        . "<body><h1>$title</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n";
    my $mount = $scope->{root_path} // '';
    $html .= "<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n" if $path ne "$mount/" && $path ne $mount;
    for my $entry ((sort { $a->[0] cmp $b->[0] } @dirs), (sort { $a->[0] cmp $b->[0] } @files)) {
        my ($name, $size, $mtime, $is_dir) = @$entry;
        my $slash = $is_dir ? '/' : '';
        my $href = _escape_path($name) . $slash;
        # "./" keeps a name such as "a:b" from being read as a URL scheme.
        $html .= sprintf "<tr><td><a href=\"./%s\">%s%s</a></td><td class=\"size\">%s</td><td>%s</td></tr>\n",
            PAGI::Middleware->html_escape($href), PAGI::Middleware->html_escape(_display($name)), $slash,
            ($is_dir ? '-' : $size), PAGI::App::File::http_date($mtime);
    }
    $html .= "</table>\n</body></html>\n";
    utf8::encode($html);
    return { status => 200, body => $html, headers => [
        [ 'content-type' => 'text/html; charset=utf-8' ], [ 'content-length' => length $html ],
        [ 'cache-control' => 'no-cache' ],
    ] };
}

# Text to show for a name: its characters if it is UTF-8, else Latin-1.
sub _display {
    my ($name) = @_;
    my $copy = $name;
    return $copy if utf8::is_utf8($copy);
    return $copy if utf8::decode($copy);
    return $name;
}

# Percent-encodes everything but unreserved characters and '/'.
sub _escape_path {
    my ($text) = @_;
    utf8::encode($text) if utf8::is_utf8($text);
    $text =~ s{([^A-Za-z0-9\-._~/])}{sprintf '%%%02X', ord $1}ge;
    return $text;
}

=head1 SEE ALSO

L<PAGI::App::File>; C<pagi-server> with no app serves the current directory
with this app.

=cut

1;
